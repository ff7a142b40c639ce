#!/usr/bin/env bash
# Creates .venv and installs coord in one of two profiles (docs/install.md):
#   bash scripts/setup.sh --demo   coordd, coord-agent, the CLI, torch and numpy: what the
#                                  demo's example (examples/allreduce) needs, nothing more
#   bash scripts/setup.sh          everything: also the trainer ('.[train]': the elastic library
#                                  with numpy and torchft, DALI, scikit-learn, tensorboard), the
#                                  test tools ('.[dev]') and, as root, sshd and Slurm for the provider tests
# torch is pinned exactly: on a CPU machine a looser pin pulls several GB of CUDA wheels.
set -euo pipefail
cd "$(dirname "$0")/.."
case "${1:-}" in
  --demo) PROFILE=demo ;;
  ""|--full) PROFILE=full ;;
  *) echo "usage: bash scripts/setup.sh [--demo | --full]" >&2; exit 2 ;;
esac
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
PIP=(.venv/bin/python -m pip install -q)
"${PIP[@]}" --upgrade pip
# torch first: torchft's torch>=2.7 would pull the newest CUDA build. numpy: without it torch warns
# at every start ("Failed to initialize NumPy") and trainer.elastic refuses to start.
"${PIP[@]}" "torch==2.13.0" numpy
if [ "$PROFILE" = demo ]; then
  "${PIP[@]}" -e .
  echo "coord (daemon, agent, CLI, torch) installed in $(pwd)/.venv"
  echo "to add in-process recovery (torchft): .venv/bin/pip install -e '.[elastic]'"
  echo "to add the fast trainer too (DALI ~1 GB, scikit-learn, tensorboard): bash scripts/setup.sh"
  exit 0
fi
"${PIP[@]}" -e ".[dev,train]"
# The ssh provider's tests start a real sshd (Debian's openssh-server) on a loopback port.
if [ ! -x /usr/sbin/sshd ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  (apt-get install -y -q openssh-server || { apt-get update -q && apt-get install -y -q openssh-server; }) >/dev/null
fi
# The slurm provider's tests start a real Slurm (Debian's slurm-wlm and munge) in a temp dir.
if ! command -v slurmctld >/dev/null && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  SLURM_PKGS=(slurm-wlm slurm-client munge)
  (apt-get install -y -q --no-install-recommends "${SLURM_PKGS[@]}" || { apt-get update -q &&
    apt-get install -y -q --no-install-recommends "${SLURM_PKGS[@]}"; }) >/dev/null
fi
echo "coord installed in $(pwd)/.venv"
