#!/usr/bin/env bash
# brindle's test command: installs dependencies, then lints and runs every test
# (unit, datastore conformance on embedded + a real etcd, crash tests, gRPC tests). Run as root.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/install-deps.sh

cargo clippy --workspace --all-targets --locked -- -D warnings
cargo test --workspace --locked
