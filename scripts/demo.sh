#!/usr/bin/env bash
# README command 1: a full rotation on an embedded simulated cluster with a real valkey-server.
# Installs valkey-server when missing (as root); where that is impossible the demo uses its
# in-memory key store. Builds the demo binary and runs it. Extra arguments go to
# `apikey-rotator demo` (for example --fail-at sirius-engine, --store memory).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/ensure-valkey.sh || echo "valkey-server is not available; the demo falls back to its in-memory key store." >&2
exec cargo run --quiet --release --locked --features demo -- demo "$@"
