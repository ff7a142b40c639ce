#!/usr/bin/env bash
# One command from a fresh clone: the light install (scripts/setup.sh --demo: no trainer, see
# docs/install.md), start coordd with the local provider, submit the 3-node all-reduce example,
# follow it to SUCCEEDED, stop coordd. Exit code: the job's.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --demo
export COORDD_STATE_DIR=${COORDD_STATE_DIR:-$(pwd)/.coord-demo}
OUT="$COORDD_STATE_DIR.log"  # what coordd prints: where it is, warnings, errors
.venv/bin/coordd serve --listen 127.0.0.1:0 >"$OUT" 2>&1 &
COORDD=$!
trap 'kill $COORDD 2>/dev/null; wait $COORDD 2>/dev/null || true' EXIT
# Up once its lock file names this coordd and an address: a coordd.addr left by an earlier run,
# or another coordd's, is never taken for this one's.
addr=""
for _ in $(seq 600); do
  if ! kill -0 $COORDD 2>/dev/null; then
    echo "coordd exited before it listened; its output ($OUT):" >&2
    tail -n 20 "$OUT" >&2
    exit 1
  fi
  addr=$(sed -n "s/.*\"pid\": $COORDD, \"address\": \"\([^\"]\+\)\".*/\1/p" \
    "$COORDD_STATE_DIR/coordd.pid" 2>/dev/null || true)
  [ -n "$addr" ] && break
  sleep 0.1
done
if [ -z "$addr" ]; then
  echo "coordd did not listen within 60 s; its output ($OUT):" >&2
  tail -n 20 "$OUT" >&2
  exit 1
fi
echo "coordd is listening on $addr (log: $COORDD_STATE_DIR/coordd.log)"
rc=0
.venv/bin/coord submit "${1:-examples/allreduce/job.toml}" || rc=$?
[ $rc = 0 ] || echo "the job did not succeed (exit $rc); coordd's log:" \
  "$COORDD_STATE_DIR/coordd.log, its output: $OUT" >&2
if ! .venv/bin/python -c "import torchft" 2>/dev/null; then
  echo "this was the light install: in-process recovery (torchft) and the fast trainer"
  echo "(examples/imagenet) come with: bash scripts/setup.sh   (see docs/install.md)"
fi
exit $rc
