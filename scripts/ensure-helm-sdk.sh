#!/usr/bin/env bash
# Installs helm-python-sdk (Helm's Go SDK behind a Python binding; no helm binary) from PyPI when
# it is missing. scripts/chart.py and tests/integration/chart.rs render and lint the chart with it.
set -euo pipefail

if python3 -c "import helm_python" >/dev/null 2>&1; then
  exit 0
fi
python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore "helm-python-sdk==0.2.2"
python3 -c "import helm_python"
