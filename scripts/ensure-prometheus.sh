#!/usr/bin/env bash
# Installs Debian's prometheus when it is missing. tests/integration/metrics_gate.rs starts its own server on
# a free loopback port; this only makes the binary available.
set -euo pipefail

if command -v prometheus >/dev/null 2>&1; then
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "prometheus is missing and installing it needs root (apt-get)." >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends prometheus >/dev/null
# The package may start a system service on 9090; the tests never use it.
(systemctl stop prometheus 2>/dev/null || service prometheus stop 2>/dev/null || true) >/dev/null
command -v prometheus >/dev/null
