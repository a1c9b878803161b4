#!/usr/bin/env bash
# brindle's main demo: the all-in-one control plane on the embedded store, driven with the real
# grpcurl: create a pool, allocate addresses for pods on two nodes (a retried ADD gets the same
# address), show usage, release, and check consistency. Run as root on Debian.
# BRINDLE_DEMO_KEEP=1 leaves the server running afterwards.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/install-deps.sh

cargo build --locked -p brindle
state="$(mktemp -d /tmp/brindle-demo-XXXXXX)"
addr="127.0.0.1:${BRINDLE_DEMO_PORT:-7400}"
target/debug/brindle server --listen "$addr" --store-path "$state/store.redb" 2>"$state/server.log" &
server=$!
cleanup() {
  if [[ "${BRINDLE_DEMO_KEEP:-0}" != 1 ]]; then
    kill "$server" 2>/dev/null || true
    wait "$server" 2>/dev/null || true
    rm -rf "$state"
  fi
}
trap cleanup EXIT

for _ in $(seq 50); do
  grpcurl -plaintext "$addr" grpc.health.v1.Health/Check >/dev/null 2>&1 && break
  sleep 0.2
done

step() { printf '\n$ %s\n' "$*"; "$@"; }
ipam() { step grpcurl -plaintext -d "$2" "$addr" "brindle.ipam.v1.Ipam/$1"; }
echo "brindle server (embedded store at $state/store.redb) listening on $addr"
step grpcurl -plaintext "$addr" list
step grpcurl -plaintext "$addr" grpc.health.v1.Health/Check
ipam CreatePool '{"pool":{"name":"default","cidr":"10.244.0.0/16","vxlanMode":"ENCAP_MODE_ALWAYS","natOutgoing":true}}'
ipam AutoAssign '{"handleId":"k8s-pod-network.c0ffee01","node":"node-a","numIpv4":1,"attributes":{"namespace":"default","pod":"web-0"}}'
ipam AutoAssign '{"handleId":"k8s-pod-network.c0ffee01","node":"node-a","numIpv4":1}'
ipam AutoAssign '{"handleId":"k8s-pod-network.c0ffee02","node":"node-b","numIpv4":1,"attributes":{"namespace":"default","pod":"db-0"}}'
ipam Show '{"blocks":true}'
ipam ReleaseByHandle '{"handleId":"k8s-pod-network.c0ffee01"}'
ipam Check '{"againstLiveWorkloads":true,"liveHandleIds":["k8s-pod-network.c0ffee02"]}'
if [[ "${BRINDLE_DEMO_KEEP:-0}" == 1 ]]; then
  echo "server left running (pid $server); logs in $state/server.log"
fi
