//! brindle-cni: the CNI shim exec'd by the container runtime (filled by the node-agent issue).
