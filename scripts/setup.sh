#!/usr/bin/env bash
# Creates .venv and installs coord in one of two profiles (docs/install.md):
#   bash scripts/setup.sh --demo   coordd, coord-agent, the CLI, torch and numpy: what the
#                                  demo's example (examples/allreduce) needs, nothing more
#   bash scripts/setup.sh          everything: also the trainer ('.[train]': the elastic library
#                                  with numpy and torchft, DALI, scikit-learn, tensorboard), the
#                                  test tools ('.[dev]') and, as root, the daemons the tests
#                                  start (sshd, chromium, PostgreSQL 15, Slurm and munge)
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
  "${PIP[@]}" -e ".[coordd]"
  echo "coord (daemon, agent, CLI, torch) installed in $(pwd)/.venv"
  echo "to add in-process recovery (torchft): .venv/bin/pip install -e '.[elastic]'"
  echo "to add the fast trainer too (DALI ~1 GB, scikit-learn, tensorboard): bash scripts/setup.sh"
  exit 0
fi
"${PIP[@]}" -e ".[coordd,dev,train,simulate]"
# Real daemons the tests start themselves in temp dirs, from Debian's packages: sshd (the ssh
# provider), chromium (the dashboard's browser tests through Playwright, no browser download),
# PostgreSQL 15 (the PostgreSQL backend), Slurm 22.05 and munge (the slurm provider). One
# `apt-get update`, one install of what is missing; flock: other installs on the same machine
# may run apt at the same time.
NEEDED=(/usr/sbin/sshd:openssh-server /usr/bin/chromium:chromium
        /usr/lib/postgresql/15/bin/initdb:postgresql-15 /usr/sbin/slurmctld:slurm-wlm
        /usr/bin/sbatch:slurm-client /usr/sbin/munged:munge)
MISSING=()
for pair in "${NEEDED[@]}"; do
  [ -x "${pair%%:*}" ] || MISSING+=("${pair#*:}")
done
if [ ${#MISSING[@]} -gt 0 ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "installing from Debian: ${MISSING[*]}"
  flock /tmp/apt.lock apt-get update -q >/dev/null
  DEBIAN_FRONTEND=noninteractive flock /tmp/apt.lock apt-get install -y -q "${MISSING[@]}" >/dev/null
elif [ ${#MISSING[@]} -gt 0 ]; then
  echo "not installed, and the tests that start them need them: ${MISSING[*]} (as root: apt-get install ${MISSING[*]})" >&2
fi
echo "coord installed in $(pwd)/.venv"
