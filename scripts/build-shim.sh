#!/usr/bin/env bash
# Builds the CNI shim as it is installed on hosts: a release build, statically linked and not
# position-independent. Static, because the shim is copied into the host's /opt/cni/bin and must
# not depend on the host's libc; non-PIE, because the dynamic loader and start-up relocations are
# most of a small program's start time (≈ 0.5 ms per CNI call on the development VM).
# Prints the path of the binary. Builds for the host triple explicitly, so the flags apply to the
# shim and its dependencies only (not to build scripts) and the main target directory is untouched.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
triple="$(rustc -vV | sed -n 's/^host: //p')"
RUSTFLAGS="-C target-feature=+crt-static -C relocation-model=static" \
  cargo build --locked --release -p brindle-cni --target "$triple" >&2
echo "$PWD/target/$triple/release/brindle-cni"
