//! node-agent: CNI endpoint, attachment records and the kernel dataplane (filled by the node-agent issue).
