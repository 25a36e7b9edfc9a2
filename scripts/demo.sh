#!/usr/bin/env bash
# README command 1: a full rotation on an embedded simulated cluster with a real valkey-server.
# Installs valkey-server when missing, builds the demo binary and runs it. Extra arguments go to
# `apikey-rotator demo` (for example --fail-at sirius-engine).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/ensure-valkey.sh
exec cargo run --quiet --release --locked --features demo -- demo "$@"
