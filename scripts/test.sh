#!/usr/bin/env bash
# The whole test suite, from a fresh clone: installs what it needs (valkey-server, prometheus,
# Helm's engine for Python), checks formatting and lints, then runs every test (unit, stand-in, end-to-end with
# real Valkey, the Helm chart).
set -euo pipefail
cd "$(dirname "$0")/.."

# A clean build happens once in CI: incremental caches would only take disk (1.6 GB).
if [ "${CI:-}" = true ]; then export CARGO_INCREMENTAL=0; fi
df -h . | awk 'NR==2 {print "disk: " $4 " free of " $2}'

bash scripts/ensure-valkey.sh
bash scripts/ensure-prometheus.sh
bash scripts/ensure-helm-sdk.sh
python3 scripts/chart.py check
bash scripts/check-dockerfile.sh

cargo fmt --all --check
cargo clippy --workspace --all-targets --all-features --locked -- -D warnings

if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --all-features --locked --no-fail-fast
else
  cargo test --workspace --all-features --locked --no-fail-fast
fi
