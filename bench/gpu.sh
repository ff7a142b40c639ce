#!/usr/bin/env bash
# The GPU checks in one go, for a lent GPU machine (docs/gpu-bench.md):
#   bash bench/gpu.sh               # on the GPU machine; log in $OUT/gpu.log when OUT is set
#   bash bench/gpu.sh --cpu-smoke   # anywhere: tiny sizes on the CPU, gloo for NCCL
# Each part runs in its own process under its own time limit, so one hang costs only its
# share of the lease; the report at the end names the parts that gave no figure.
# PYTHON picks the interpreter (default python3, the one that holds torch on the GPU image).
set -u -o pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PY=${PYTHON:-python3}
MODE=()
[ "${1:-}" = "--cpu-smoke" ] && MODE=(--cpu-smoke)
if [ -n "${OUT:-}" ]; then
  mkdir -p "$OUT"
  exec > >(tee -a "$OUT/gpu.log") 2>&1
fi

# Packages the image lacks travel as wheels in .whl/ (built for the GPU machine's Python, so
# never installed for a smoke run here).
if [ ${#MODE[@]} -eq 0 ] && compgen -G ".whl/*.whl" >/dev/null; then
  site=$(mktemp -d /tmp/coord-bench-site.XXXXXX)
  echo "== installing $(ls .whl/*.whl | wc -l) wheels from .whl/ into $site"
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "$site" .whl/*.whl || echo "== wheel install failed; going on without them"
  export PYTHONPATH="$PYTHONPATH:$site"
fi
command -v nvidia-smi >/dev/null && nvidia-smi -L

results=$(mktemp /tmp/coord-gpu-bench.XXXXXX)
part() {  # NAME LIMIT_S
  echo "== $1 (at most $2 s)"
  timeout -k 10 "$2" "$PY" bench/gpu.py "${MODE[@]}" --results "$results" "$1"
  case $? in 124|137) echo "== $1 stopped at its limit of $2 s" ;; esac
}
part train 120
part dali 120
part nccl 90
"$PY" bench/gpu.py "${MODE[@]}" --results "$results" report
code=$?
[ -n "${OUT:-}" ] && cp "$results" "$OUT/gpu-results.jsonl"
rm -rf "$results" ${site:+"$site"}
exit $code
