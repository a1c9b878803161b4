#!/usr/bin/env bash
# brindle's test command: installs dependencies, then lints and runs every test
# (unit, datastore conformance on embedded + a real etcd, crash tests, gRPC tests). Run as root.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/install-deps.sh
# A one-off build gains nothing from incremental artefacts; they would double the target directory.
export CARGO_INCREMENTAL=0

cargo clippy --workspace --all-targets --locked -- -D warnings
# End-to-end tests execute other packages' binaries (brindle-cni, node-agent): build them all first.
cargo build --workspace --bins --locked
# The end-to-end CNI tests exec the shim in the form hosts install it (static release build).
BRINDLE_CNI_BIN="$(scripts/build-shim.sh)"
export BRINDLE_CNI_BIN
log="$(mktemp /tmp/brindle-test-XXXXXX.log)"
trap 'rm -f "$log"' EXIT
cargo test --workspace --locked 2>&1 | tee "$log"
# One closing line over every test binary (cargo prints one result line per binary).
awk '/^test result:/ { passed += $4; failed += $6; ignored += $8 }
     END { printf "\ntests: %d passed, %d failed, %d skipped\n", passed, failed, ignored }' "$log"
