"""Failover of a coordd set on PostgreSQL: the leader SIGKILLed while a job trains.

Starts a real PostgreSQL 15 (tests/pg.py) and two coordd on it (tests/coordd_set.py: their
own state directories, the CA and tokens shared), runs examples/elastic/train.py on two local
nodes, SIGKILLs the leader at step 40 and reads, per round:
  * kill -> the standby leads (its `leadership.acquired` log entry),
  * kill -> every agent registered with the new leader (its nodes back to ASSIGNED),
  * kill -> the first step committed after that: the first one led by the new leader,
  * the longest pause between two committed steps around the kill (what training felt),
  * whether the workers were the same processes and every step was committed exactly once.

Cases (--case, repeatable; default all):
  restart           restart mode, both coordd on this host.
  inprocess         in-process mode, the leader on another host (a network namespace,
                    tests/netns.py; needs root): its Lighthouse ends with its lease and the
                    replicas move to the one the new leader starts here.
  inprocess-host    the same, with the leader's Lighthouse SIGKILLed at the kill too (the
                    leader's host lost; its nodes live elsewhere).
  inprocess-sqlite  the baseline: one coordd on SQLite, SIGKILLed and started again at once
                    on its state directory; it takes its Lighthouse back on the same port.

    .venv/bin/python bench/failover.py                  # 3 rounds, lease 2 s and 3 s
    .venv/bin/python bench/failover.py --rounds 1 --lease 3 --case inprocess
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the test harness's PostgreSQL and coordd set

from contract.states import JobState, NodeState  # noqa: E402
from coordinator.localcluster import LocalCoordd, start_coordd, wait_for  # noqa: E402
from tests import netns, pg  # noqa: E402
from tests.coordd_set import (lighthouses, set_client, start_across, start_set,  # noqa: E402
                              stop_set, wait_for_leader)
from tests.integration.harness import elastic_job, job_pids  # noqa: E402
from tests.net import free_port  # noqa: E402
from trainer.elastic import committed_history  # noqa: E402
from trainer.elastic.steplog import STEPLOG_FILE, read_records  # noqa: E402

KILL_AT_STEP = 40
STEPS = {"restart": 400, "inprocess": 300}
STEP_SLEEP = {"restart": 0.04, "inprocess": 0.03}
CASES = ["restart", "inprocess", "inprocess-host", "inprocess-sqlite"]


def log_times(path: Path, event: str, after: float, **match) -> list[float]:
    """Wall-clock times after `after` of coordd's log entries `event` with fields `match`."""
    found = []
    for line in path.read_text().splitlines():
        entry = json.loads(line)
        if entry.get("event") == event and all(entry.get(k) == v for k, v in match.items()):
            if (at := datetime.fromisoformat(entry["timestamp"]).timestamp()) > after:
                found.append(at)
    return found


def submit(member: LocalCoordd, scratch: Path, mode: str) -> tuple[str, Path]:
    work, ckpt = scratch / "job", scratch / "ckpt"
    run = f"python train.py --steps {STEPS[mode]} --ckpt-every 25 --step-sleep {STEP_SLEEP[mode]}"
    job_file = elastic_job(work, f"""
        name = "failover"
        run = "{run}"
        checkpoint_dir = "{ckpt}"
        [nodes]
        count = 2
        [fault_tolerance]
        mode = "{mode}"
    """)
    with member.client() as client:
        job = client.submit(job_file)
    wait_for(lambda: (h := committed_history(ckpt).lineage) and h[-1].step >= KILL_AT_STEP,
             120, what=f"step {KILL_AT_STEP}")
    return job.id, ckpt


def follow(client, job_id: str, ckpt: Path, workers: list[int], killed_at: float,
           led: float, log: Path, mode: str) -> dict:
    """Wait for the agents and the job's end; the round's figures."""
    wait_for(lambda: all(n.state == NodeState.ASSIGNED for n in client.nodes(job_id)), 60,
             what="the agents to come back")
    same_workers = sorted(job_pids(job_id)) == workers
    final = client.wait(job_id, timeout=300)
    back = max(log_times(log, "node.state", killed_at, new="ASSIGNED"))
    times = [r.t for r in read_records(ckpt / STEPLOG_FILE)]
    first_led = min(t for t in times if t > back)
    around = [t for t in times if killed_at - 5 < t < back + 10]
    history = committed_history(ckpt)
    return {"lead": led - killed_at, "agents": back - killed_at, "step": first_led - killed_at,
            "pause": max(b - a for a, b in zip(around, around[1:])),
            "ok": (final.state == JobState.SUCCEEDED and final.generation == 1
                   and same_workers and history.ok and not history.lost
                   and history.steps == list(range(1, STEPS[mode] + 1)))}


def kill_leader(members: list[LocalCoordd], postgres: pg.Postgres, url: str, scratch: Path,
                mode: str, lighthouse_too: bool = False) -> dict:
    active, standby = members
    job_id, ckpt = submit(active, scratch, mode)
    workers = sorted(job_pids(job_id))
    doomed = list(lighthouses(active).values()) if lighthouse_too else []
    killed_at = time.time()
    active.process.kill()
    for pid in doomed:
        os.kill(pid, signal.SIGKILL)
    active.process.wait()
    wait_for_leader(postgres, url, 2)
    led = min(log_times(standby.log_path, "leadership.acquired", killed_at))
    with set_client(members, standby) as client:
        return follow(client, job_id, ckpt, workers, killed_at, led, standby.log_path, mode)


def restart_case(lease_s: float, scratch: Path, postgres: pg.Postgres) -> dict:
    url = postgres.new_database()
    members = start_set(scratch, postgres, url, lease_s)
    try:
        return kill_leader(members, postgres, url, scratch, "restart")
    finally:
        stop_set(members)


def across_case(lease_s: float, scratch: Path, lighthouse_too: bool) -> dict:
    host = netns.make_host()
    try:
        postgres, url, members = start_across(scratch, host, lease_s)
        try:
            return kill_leader(members, postgres, url, scratch, "inprocess", lighthouse_too)
        finally:
            stop_set(members)
            postgres.stop()
    finally:
        host.remove()


def sqlite_case(scratch: Path) -> dict:
    """One coordd on SQLite, SIGKILLed and started again at once at the same address."""
    state, listen = scratch / "state", f"127.0.0.1:{free_port()}"
    coordd = start_coordd(state, listen=listen)
    try:
        job_id, ckpt = submit(coordd, scratch, "inprocess")
        workers = sorted(job_pids(job_id))
        killed_at = time.time()
        coordd.process.kill()
        coordd.process.wait()
        coordd = start_coordd(state, listen=listen)
        back = min(log_times(coordd.log_path, "coordd.listening", killed_at))
        with coordd.client() as client:
            return follow(client, job_id, ckpt, workers, killed_at, back, coordd.log_path,
                          "inprocess")
    finally:
        coordd.stop()


def one_round(case: str, lease_s: float, scratch: Path, postgres: pg.Postgres) -> dict:
    if case == "restart":
        return restart_case(lease_s, scratch, postgres)
    if case == "inprocess-sqlite":
        return sqlite_case(scratch)
    return across_case(lease_s, scratch, lighthouse_too=case == "inprocess-host")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--lease", type=float, action="append",
                        help="lease_s to measure (repeatable; default 2 and 3)")
    parser.add_argument("--case", choices=CASES, action="append",
                        help="what to measure (repeatable; default all)")
    args = parser.parse_args()
    cases = args.case or CASES
    if (why := netns.available()) and {"inprocess", "inprocess-host"} & set(cases):
        sys.exit(f"the in-process cases across hosts need network namespaces: {why}")
    postgres = pg.start()
    rows = []
    try:
        for case in cases:
            for lease_s in ([0.0] if case == "inprocess-sqlite" else args.lease or [2.0, 3.0]):
                results = []
                for _ in range(args.rounds):
                    with tempfile.TemporaryDirectory(prefix="coord-failover-") as scratch:
                        results.append(one_round(case, lease_s, Path(scratch), postgres))
                    print(f"{case}, lease {lease_s} s: {results[-1]}", flush=True)
                rows.append((case, lease_s, results))
    finally:
        postgres.stop()
    print("\n| case | lease_s | kill → standby leads | kill → agents back | kill → first step "
          "led by the new leader | longest pause between steps | same workers, steps once |")
    print("|---|---|---|---|---|---|---|")
    for case, lease_s, results in rows:
        cells = [f"{statistics.median(r[k] for r in results):.2f} s "
                 f"({min(r[k] for r in results):.2f}–{max(r[k] for r in results):.2f})"
                 for k in ("lead", "agents", "step", "pause")]
        ok = sum(r["ok"] for r in results)
        lease = f"{lease_s:g}" if lease_s else "–"
        print(f"| {case} | {lease} | {' | '.join(cells)} | {ok}/{len(results)} |")


if __name__ == "__main__":
    main()
