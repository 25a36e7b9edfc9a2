#!/usr/bin/env bash
# Installs valkey-server from Debian bookworm-backports when it is missing.
# Tests start their own server on a free loopback port; this only makes the binary available.
# Debian's build has TLS built in (tests/integration/tls.rs starts TLS-only servers); the tests
# make their certificates themselves (rcgen), so no openssl is needed.
set -euo pipefail

if command -v valkey-server >/dev/null 2>&1; then
  exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
  echo "valkey-server is missing and installing it needs root (apt-get)." >&2
  exit 1
fi

list=/etc/apt/sources.list.d/bookworm-backports.list
if ! grep -rqs "bookworm-backports" /etc/apt/sources.list /etc/apt/sources.list.d/; then
  echo "deb http://deb.debian.org/debian bookworm-backports main" >"$list"
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq -t bookworm-backports valkey-server >/dev/null
# The package starts a system service on 6379; the tests never use it.
(systemctl stop valkey-server 2>/dev/null || service valkey-server stop 2>/dev/null || true) >/dev/null
command -v valkey-server >/dev/null
