#!/usr/bin/env bash
# Create .venv and install the toolkit (Linux, macOS). setup.ps1 does the same on Windows, line for line.
# `bash setup.sh --dev` also installs the test tools (pytest, ruff), for the test command and CI.
# CPU torch 2.13 by default; set TORCH_SPEC for a CUDA build, e.g.
# TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128" bash setup.sh
set -euo pipefail
cd "$(dirname "$0")"
case "${1:-}" in
  "") EXTRAS="" ;;
  --dev) EXTRAS="[dev]" ;;
  *) echo "usage: bash setup.sh [--dev]  (--dev: also pytest and ruff, for running the tests)" >&2; exit 2 ;;
esac
PY=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
# Torch is found and pinned from its metadata, never imported: before numpy is installed, importing torch prints
# "Failed to initialize NumPy".
HAS_TORCH="import importlib.util, sys; sys.exit(importlib.util.find_spec('torch') is None)"
PIN_TORCH="import importlib.metadata as m, sys; v = m.version('torch'); open(sys.argv[1], 'w').write('torch==' + v.split('+')[0] + '\n')"
VENV_PY=.venv/bin/python
# One line per step: the installs take minutes and pip runs quietly.
step() { echo "[$1/5] $2"; }
step 1 "virtual environment .venv"
[ -x "$VENV_PY" ] || "$PY" -m venv .venv
step 2 "upgrading pip"
"$VENV_PY" -m pip install -q --upgrade pip
step 3 "torch ($TORCH_SPEC unless one is installed; the largest download, a few minutes)"
# shellcheck disable=SC2086  # TORCH_SPEC may hold several words (an --index-url)
"$VENV_PY" -c "$HAS_TORCH" || "$VENV_PY" -m pip install -q $TORCH_SPEC
step 4 "pinning torch in .venv/torch-constraint.txt"
# Pin whatever torch is installed so no later dependency swaps it for another build.
"$VENV_PY" -c "$PIN_TORCH" .venv/torch-constraint.txt
step 5 "the toolkit and its dependencies$EXTRAS (a few minutes)"
"$VENV_PY" -m pip install -q -c .venv/torch-constraint.txt -e ".$EXTRAS"
echo "setup done: $("$VENV_PY" -c 'import torch; print("torch", torch.__version__)')"
