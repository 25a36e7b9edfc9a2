#!/usr/bin/env bash
# Both benchmarks from a fresh clone: installs valkey-server when missing, then prints the tables
# the README shows. ROTATIONS (default 100) and SCALE (default 1000) change their sizes.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/ensure-valkey.sh
cargo bench --locked --bench rotation
cargo bench --locked --bench scale
