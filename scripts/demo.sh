#!/usr/bin/env bash
# brindle's main demo, on one machine, without touching the host's network: a "node" network
# namespace runs the all-in-one control plane (`brindle server`, embedded store) and the node agent;
# two "pods" (network namespaces, as containerd makes them) are attached by executing the real CNI
# shim exactly as a runtime does. The pods ping each other; grpcurl shows the IPAM state; CHECK and
# DEL run; everything is removed at the end. Run as root on Debian.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/install-deps.sh

cargo build --locked -p brindle -p node-agent -p brindle-cni
bin="$PWD/target/debug"
tag="brdemo$$"
node="$tag-node"
state="$(mktemp -d /tmp/brindle-demo-XXXXXX)"
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  for ns in "$node" "$tag-pod-a" "$tag-pod-b"; do ip netns del "$ns" 2>/dev/null || true; done
  rm -rf "$state"
}
trap cleanup EXIT

step() { printf '\n$ %s\n' "$*"; "$@"; }
in_node() { ip netns exec "$node" "$@"; }

ip netns add "$node"
in_node ip link set lo up
ip netns exec "$node" "$bin/brindle" server --listen 127.0.0.1:7400 --store-path "$state/store.redb" 2>"$state/server.log" &
pids+=($!)
for _ in $(seq 100); do in_node grpcurl -plaintext 127.0.0.1:7400 grpc.health.v1.Health/Check >/dev/null 2>&1 && break; sleep 0.1; done

echo "== control plane (brindle server, embedded store) in network namespace $node"
step in_node grpcurl -plaintext 127.0.0.1:7400 list
step in_node grpcurl -plaintext -d '{"pool":{"name":"default","cidr":"10.244.0.0/16"}}' 127.0.0.1:7400 brindle.ipam.v1.Ipam/CreatePool

ip netns exec "$node" "$bin/node-agent" --node-name demo-node --cni-socket "$state/cni.sock" --state-dir "$state/agent" \
  --ipam-endpoint http://127.0.0.1:7400 2>"$state/agent.log" &
pids+=($!)
for _ in $(seq 100); do [[ -S "$state/cni.sock" ]] && break; sleep 0.1; done

conf="{\"cniVersion\":\"1.1.0\",\"name\":\"k8s-pod-network\",\"type\":\"brindle-cni\",\"agentSocket\":\"$state/cni.sock\",\"mtu\":1450}"
cni() { # cni COMMAND POD
  CNI_COMMAND="$1" CNI_CONTAINERID="demo-$2" CNI_NETNS="/run/netns/$tag-$2" CNI_IFNAME=eth0 \
    CNI_ARGS="IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=$2" CNI_PATH=/opt/cni/bin \
    "$bin/brindle-cni" <<<"$conf"
}

echo; echo "== two pods attached through the CNI shim (as containerd would)"
for pod in pod-a pod-b; do
  ip netns add "$tag-$pod"
  printf '\n$ CNI_COMMAND=ADD brindle-cni  # %s\n' "$pod"
  cni ADD "$pod" | tee "$state/$pod.json"; echo
done
ip_b="$(grep -o '"address":"[0-9.]*' "$state/pod-b.json" | cut -d'"' -f4)"
step ip netns exec "$tag-pod-a" ip -4 addr show eth0
step ip netns exec "$tag-pod-a" ip route
step ip netns exec "$tag-pod-a" ping -c 3 -W 2 "$ip_b"

echo; echo "== IPAM state"
step in_node grpcurl -plaintext -d '{"blocks":true}' 127.0.0.1:7400 brindle.ipam.v1.Ipam/Show
printf '\n$ CNI_COMMAND=CHECK brindle-cni  # pod-a\n'; cni CHECK pod-a && echo "CHECK ok"
for pod in pod-a pod-b; do printf '\n$ CNI_COMMAND=DEL brindle-cni  # %s\n' "$pod"; cni DEL "$pod" && echo "DEL ok"; done
step in_node grpcurl -plaintext -d '{}' 127.0.0.1:7400 brindle.ipam.v1.Ipam/Check
