#!/usr/bin/env bash
# brindle's main demo: a 3-node cluster in network namespaces on this machine, without touching
# the host's network — two underlay subnets joined by a router namespace, the all-in-one control
# plane (`brindle server`, embedded store), a real node agent per node registering with route-svc
# and programming routes to the other nodes' pods (a VXLAN CrossSubnet pool: direct inside a
# subnet, VXLAN across), two pods per node attached through the real CNI shim and registered with
# policy-svc — then each node's path to every remote pod, the pod-to-pod reachability matrix, a
# Kubernetes NetworkPolicy enforced by the agents (the matrix again, and policy trace explaining a
# denied pair), and everything is torn down. The underlay MTU is 1400 and the network
# configuration sets none: the agents detect the pod MTU (1350 over VXLAN) and the demo prints it.
# The control plane speaks mTLS: the lab makes a CA, the server's and an administrator's
# certificates and a join token per node; each agent trades its token for its node's certificate on
# the server's bootstrap port and renews it on its own.
# Run as root on Debian.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/install-deps.sh

cargo build --locked -p brindle -p node-agent -p brindle-cni
exec target/debug/brindle lab up --nodes 3 --pods-per-node 2 \
  --encapsulation vxlan-cross-subnet --subnets 2 --policy --underlay-mtu 1400 --once
