"""Failover of a coordd set on PostgreSQL: the leader SIGKILLed during restart-mode training.

Starts a real PostgreSQL 15 (tests/pg.py) and two coordd on it (tests/coordd_set.py: their
own state directories, the CA and tokens shared), runs examples/elastic/train.py on two local
nodes under the leader, SIGKILLs the leader at step 40 and reads, per round:
  * kill -> the standby leads (its `leadership.acquired` log entry),
  * kill -> every agent registered with the new leader (its nodes back to ASSIGNED),
  * kill -> the first step committed after that: the first one led by the new leader,
  * the longest pause between two committed steps around the kill (what training felt),
  * whether the workers were the same processes and every step was committed exactly once.

    .venv/bin/python bench/failover.py                  # 3 rounds, lease 2 s and 3 s
    .venv/bin/python bench/failover.py --rounds 1 --lease 3
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import textwrap
import time
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the test harness's PostgreSQL and coordd set

from contract.states import JobState, NodeState  # noqa: E402
from coordinator.localcluster import wait_for  # noqa: E402
from tests import pg  # noqa: E402
from tests.coordd_set import set_client, start_set, stop_set, wait_for_leader  # noqa: E402
from tests.integration.harness import job_pids  # noqa: E402
from trainer.elastic import committed_history  # noqa: E402
from trainer.elastic.steplog import STEPLOG_FILE, read_records  # noqa: E402

KILL_AT_STEP = 40
JOB = """
    name = "failover"
    run = "python train.py --steps 400 --ckpt-every 25 --step-sleep 0.04"
    [nodes]
    count = 2
    [fault_tolerance]
    mode = "restart"
"""


def log_times(path: Path, event: str, **match) -> list[float]:
    """Wall-clock times of coordd's structured log entries `event` with fields `match`."""
    found = []
    for line in path.read_text().splitlines():
        entry = json.loads(line)
        if entry.get("event") == event and all(entry.get(k) == v for k, v in match.items()):
            found.append(datetime.fromisoformat(entry["timestamp"]).timestamp())
    return found


def one_round(postgres: pg.Postgres, lease_s: float, scratch: Path) -> dict:
    url = postgres.new_database()
    members = start_set(scratch, postgres, url, lease_s)
    active, standby = members
    work = scratch / "job"
    shutil.copytree(ROOT / "examples" / "elastic", work)
    (work / "job.toml").write_text(textwrap.dedent(JOB))
    try:
        with active.client() as client:
            job = client.submit(work / "job.toml")
        ckpt = active.state_dir / "checkpoints" / job.id
        wait_for(lambda: (h := committed_history(ckpt).lineage) and h[-1].step >= KILL_AT_STEP,
                 120, what=f"step {KILL_AT_STEP}")
        workers = sorted(job_pids(job.id))
        killed_at = time.time()
        active.process.kill()
        active.process.wait()
        wait_for_leader(postgres, url, 2)
        with set_client(members, standby) as client:
            wait_for(lambda: all(n.state == NodeState.ASSIGNED for n in client.nodes(job.id)), 60,
                     what="the agents to follow the new leader")
            same_workers = sorted(job_pids(job.id)) == workers
            final = client.wait(job.id, timeout=300)
        led = min(log_times(standby.log_path, "leadership.acquired"))
        back = max(log_times(standby.log_path, "node.state", new="ASSIGNED"))
        times = [r.t for r in read_records(ckpt / STEPLOG_FILE)]
        first_led = min(t for t in times if t > back)
        around = [t for t in times if killed_at - 5 < t < first_led + 5]
        history = committed_history(ckpt)
        return {"lead": led - killed_at, "agents": back - killed_at,
                "step": first_led - killed_at,
                "pause": max(b - a for a, b in zip(around, around[1:])),
                "ok": (final.state == JobState.SUCCEEDED and final.generation == 1
                       and same_workers and history.ok and not history.lost)}
    finally:
        stop_set(members)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--lease", type=float, action="append",
                        help="lease_s to measure (repeatable; default 2 and 3)")
    args = parser.parse_args()
    postgres = pg.start()
    rows = []
    try:
        for lease_s in args.lease or [2.0, 3.0]:
            results = []
            for _ in range(args.rounds):
                with tempfile.TemporaryDirectory(prefix="coord-failover-") as scratch:
                    results.append(one_round(postgres, lease_s, Path(scratch)))
                print(f"lease {lease_s} s: {results[-1]}", flush=True)
            rows.append((lease_s, results))
    finally:
        postgres.stop()
    print("\n| lease_s | kill → standby leads | kill → agents back | kill → first step led "
          "by the new leader | longest pause between steps | same workers, steps once |")
    print("|---|---|---|---|---|---|")
    for lease_s, results in rows:
        cells = [f"{statistics.median(r[k] for r in results):.2f} s "
                 f"({min(r[k] for r in results):.2f}–{max(r[k] for r in results):.2f})"
                 for k in ("lead", "agents", "step", "pause")]
        ok = sum(r["ok"] for r in results)
        print(f"| {lease_s:g} | {' | '.join(cells)} | {ok}/{len(results)} |")


if __name__ == "__main__":
    main()
