#!/usr/bin/env bash
# Creates .venv and installs coord with everything the example and the tests need.
# torch is pinned exactly: on a CPU machine a looser pin pulls several GB of CUDA wheels.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q "torch==2.13.0" numpy
# train: the fast trainer (NVIDIA DALI nvidia-dali-cuda120, whose CPU operators run without a
# GPU, scikit-learn, tensorboard, pillow); none of them pulls another torch.
.venv/bin/python -m pip install -q -e ".[dev,train,dali]"
# The ssh provider's tests start a real sshd (Debian's openssh-server) on a loopback port.
if [ ! -x /usr/sbin/sshd ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  (apt-get install -y -q openssh-server || { apt-get update -q && apt-get install -y -q openssh-server; }) >/dev/null
fi
echo "coord installed in $(pwd)/.venv"
