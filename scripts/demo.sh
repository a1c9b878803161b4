#!/usr/bin/env bash
# brindle's main demo: the all-in-one control plane on the embedded store, inspected with grpcurl.
# Run as root on Debian. BRINDLE_DEMO_KEEP=1 leaves the server running afterwards.
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
echo "brindle server (embedded store at $state/store.redb) listening on $addr"
step grpcurl -plaintext "$addr" list
step grpcurl -plaintext "$addr" grpc.health.v1.Health/Check
step grpcurl -plaintext "$addr" describe grpc.health.v1.Health
if [[ "${BRINDLE_DEMO_KEEP:-0}" == 1 ]]; then
  echo "server left running (pid $server); logs in $state/server.log"
fi
