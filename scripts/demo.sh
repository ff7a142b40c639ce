#!/usr/bin/env bash
# One command from a fresh clone: the light install (scripts/setup.sh --demo: no trainer, see
# docs/install.md), start coordd with the local provider, submit the 3-node all-reduce example,
# follow it to SUCCEEDED, stop coordd. Exit code: the job's.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --demo
export COORDD_STATE_DIR=${COORDD_STATE_DIR:-$(pwd)/.coord-demo}
rm -f "$COORDD_STATE_DIR/coordd.addr"  # a previous run's address must not be read as this one's
.venv/bin/coordd serve --listen 127.0.0.1:0 >"$COORDD_STATE_DIR.log" 2>&1 &
COORDD=$!
trap 'kill $COORDD 2>/dev/null; wait $COORDD 2>/dev/null || true' EXIT
for _ in $(seq 100); do [ -s "$COORDD_STATE_DIR/coordd.addr" ] && break; sleep 0.1; done
echo "coordd is listening on $(cat "$COORDD_STATE_DIR/coordd.addr") (log: $COORDD_STATE_DIR/coordd.log)"
rc=0
.venv/bin/coord submit "${1:-examples/allreduce/job.toml}" || rc=$?
echo "this was the light install: in-process recovery (torchft) and the fast trainer"
echo "(examples/imagenet) come with: bash scripts/setup.sh   (see docs/install.md)"
exit $rc
