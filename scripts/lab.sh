#!/usr/bin/env bash
# brindle's main demo: a 4-node cluster in network namespaces on this machine, without touching
# the host's network — two underlay subnets joined by a router namespace running FRR, the
# all-in-one control plane (`brindle server`, embedded store), a real node agent per node
# registering with route-svc, programming routes to the other nodes' pods in its subnet and
# configuring a BIRD 2 beside it that announces the node's pod blocks over BGP to the router (the
# pool has no encapsulation: pods in the other subnet are reached through the router, which
# learned their blocks), two pods per node attached through the real CNI shim and registered with
# policy-svc — then each node's path to every remote pod, the pod-to-pod reachability matrix, the
# router's BGP table and a host outside the cluster pinging every pod, a Kubernetes NetworkPolicy
# enforced by the agents (the matrix again, and policy trace explaining a denied pair), a Calico
# StagedGlobalNetworkPolicy that changes nothing in the kernel while trace gives both verdicts, the
# first node's eth0 put under policy by a Calico HostEndpoint (its port 9400 closed to the second
# node, SSH's failsafe port still open), the flows the policies denied as the nodes logged them
# (`brindle flows --denied`), every
# node's BGP session in `brindle node status`, and everything is torn down. The underlay MTU is
# 1400 and the network configuration sets none: the agents detect the pod MTU and the demo prints it.
# The control plane speaks mTLS: the lab makes a CA, the server's and an administrator's
# certificates and a join token per node; each agent trades its token for its node's certificate on
# the server's bootstrap port and renews it on its own.
# Run as root on Debian.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/install-deps.sh

cargo build --locked -p brindle -p node-agent -p brindle-cni
exec target/debug/brindle lab up --nodes 4 --pods-per-node 2 \
  --encapsulation never --subnets 2 --bgp --policy --underlay-mtu 1400 --once
