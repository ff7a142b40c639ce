#!/usr/bin/env bash
# Creates .venv and installs coord with everything the example and the tests need.
# torch is pinned exactly: on a CPU machine a looser pin pulls several GB of CUDA wheels.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q "torch==2.13.0" numpy
.venv/bin/python -m pip install -q -e ".[dev,train]"
echo "coord installed in $(pwd)/.venv"
