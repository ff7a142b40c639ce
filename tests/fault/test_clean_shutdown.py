"""SIGTERM to coordd, or to one agent, ends it within a bounded time, leaves nothing it started
running (also a worker that ignores SIGTERM, and the worker's own child), and leaves the state
directory consistent: SQLite's integrity check passes and coordd starts again on it. A job
whose local nodes a clean stop ended resumes from its checkpoint at the next start, or, with
none, is failed by the stop: it never starts over from step 0."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import textwrap
import time

import pytest

from contract.states import JobState, NodeState
from coordinator.localcluster import BIN
from coordinator.providers.procs import session_pids
from tests.integration.harness import ROOT, job_pids, start_coordd, wait_for
from trainer.elastic import committed_history

STOP_GRACE_S = 2
FAST = {"COORDD_STOP_GRACE_S": str(STOP_GRACE_S), "COORDD_RESTART_GRACE_S": "3",
        "COORDD_SCALE_UP_SETTLE_S": "0.5"}
# Rank 1 ignores SIGTERM, so stopping it needs the SIGKILL after the grace; both ranks start a
# child of their own, which must go with them.
WORKER = textwrap.dedent("""
    import os, signal, subprocess, sys, time
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    if os.environ["RANK"] == "1":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    print(f"up rank={os.environ['RANK']} gen={os.environ['COORD_GENERATION']}", flush=True)
    while True:
        time.sleep(0.5)
""")


def submit(server, tmp_path, minimum: int = 2):
    work = tmp_path / "job"
    work.mkdir(exist_ok=True)
    (work / "worker.py").write_text(WORKER)
    (work / "job.toml").write_text(f'name = "stubborn"\nrun = "python worker.py"\n'
                                   f"[nodes]\ncount = 2\nmin = {minimum}\n")
    with server.client() as client:
        job = client.submit(work / "job.toml")
        wait_for(lambda: len({l.text for l in client.logs(job.id) if l.text.startswith("up")})
                 == 2, 90, what="both ranks to run")
        return client.get(job.id)


def integrity(state_dir) -> str:
    with sqlite3.connect(state_dir / "coord.db") as db:
        return db.execute("PRAGMA integrity_check").fetchone()[0]


def coordd_stop(state_dir) -> subprocess.CompletedProcess:
    """`coordd stop`: SIGTERM to the coordd on `state_dir`, and wait until it has ended."""
    return subprocess.run([str(BIN / "coordd"), "stop", "--state-dir", str(state_dir)],
                          capture_output=True, text=True, timeout=120)


@pytest.mark.timeout(180)
def test_sigterm_to_coordd_stops_everything_it_started_and_restarts_cleanly(tmp_path):
    server = start_coordd(tmp_path / "state", env=FAST)
    try:
        job = submit(server, tmp_path)
        agents = [server.node_pid(n) for n in job.node_ids]
        assert len(job_pids(job.id)) == 4  # two workers, two children
        started = time.monotonic()
        stop = coordd_stop(server.state_dir)
        took = time.monotonic() - started
        # gRPC grace (2 s) + agents stopping workers (grace, then SIGKILL) + slack for 2 cores
        assert took < STOP_GRACE_S + 12, f"coordd took {took:.1f} s to stop"
        assert stop.returncode == 0 and server.process.wait(5) == 0, stop.stderr
        # The person who stopped it is told what became of the job, and why.
        told = " ".join(stop.stdout.split())
        assert f"job {job.id} (stubborn): FAILED: coordd was stopped" in told
        assert "no worker had reported a checkpoint" in told
        assert job_pids(job.id) == []
        assert all(session_pids(sid) == [] for sid in agents)
        assert integrity(server.state_dir) == "ok"

        # The job reported no checkpoint: the stop said it fails, and it did, not to start
        # over from nothing at the next start.
        stopped = [json.loads(line) for line in server.log_path.read_text().splitlines()
                   if '"job.failed"' in line]
        assert [entry["job"] for entry in stopped] == [job.id]
        server = start_coordd(server.state_dir, env=FAST)  # the same state, a new process
        with server.client() as client:
            again = client.get(job.id)
            assert again.node_ids == job.node_ids  # nothing forgotten
            assert again.state == JobState.FAILED
            assert "no worker had reported a checkpoint" in again.reason
            assert again.generation == job.generation and not job_pids(job.id)
    finally:
        server.stop()
    assert integrity(server.state_dir) == "ok"


@pytest.mark.timeout(180)
def test_sigterm_to_an_agent_stops_its_workers_and_the_job_goes_on(tmp_path):
    server = start_coordd(tmp_path / "state", env=FAST)
    try:
        job = submit(server, tmp_path, minimum=1)
        leaving = job.node_ids[1]  # holds rank 1, which ignores SIGTERM
        sid = server.node_pid(leaving)
        started = time.monotonic()
        os.kill(sid, signal.SIGTERM)
        wait_for(lambda: not session_pids(sid), STOP_GRACE_S + 12,
                 what="the agent and everything it started to end")
        assert time.monotonic() - started < STOP_GRACE_S + 12
        with server.client() as client:
            wait_for(lambda: (j := client.get(job.id)).state == JobState.RUNNING
                     and j.generation > job.generation, 60, what="the job to re-form")
            assert leaving not in client.get(job.id).node_ids
            node = next(n for n in client.nodes(include_gone=True) if n.id == leaving)
            assert node.state in (NodeState.LOST, NodeState.GONE)
    finally:
        server.stop()
    assert integrity(server.state_dir) == "ok"


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize("mode", ["restart", "inprocess"])
def test_a_clean_stop_resumes_a_checkpointing_job_from_its_checkpoint(tmp_path, mode):
    state, work = tmp_path / "state", tmp_path / "job"
    shutil.copytree(ROOT / "examples" / "elastic", work)
    (work / "job.toml").write_text(textwrap.dedent("""
        name = "resumer"
        run = "python train.py --steps 160 --ckpt-every 20 --step-sleep 0.03"
        [nodes]
        count = 2
        [fault_tolerance]
        mode = "{mode}"
    """).replace("{mode}", mode))
    server = start_coordd(state)
    try:
        with server.client() as client:
            job = client.submit(work / "job.toml")
            wait_for(lambda: "checkpoint.committed" in kinds(client, job.id), 120,
                     what="the job's first checkpoint")
            before = client.get(job.id)
        stop = coordd_stop(state)
        assert stop.returncode == 0, stop.stderr
        assert f"job {job.id} (resumer): its local nodes stopped; it resumes from its " \
               "checkpoint" in stop.stdout
        assert not job_pids(job.id)
        said = [json.loads(line) for line in server.log_path.read_text().splitlines()
                if '"job.interrupted"' in line]
        assert [entry["job"] for entry in said] == [job.id]
        assert "resumes from its newest checkpoint" in said[0]["message"]

        # Started and stopped at once (before its reconciler's first turn, perhaps): the
        # job stays one to resume.
        start_coordd(state)
        again = coordd_stop(state)
        assert again.returncode == 0, again.stderr
        server = start_coordd(state)
        with server.client() as client:
            final = client.wait(job.id, timeout=200)
            assert final.state == JobState.SUCCEEDED, final.reason
            events = list(client.watch(job.id, follow=False))
        order = [e.kind for e in events]
        assert order.index("coordd.stopped") < order.index("job.resuming") < len(order)
        resumed = [e.data for e in events if e.kind == "training.resumed"
                   and e.data["worker_generation"] > before.generation]
        assert resumed and resumed[0]["step"] >= 20
        history = committed_history(state / "checkpoints" / job.id)
        after = [r.step for r in history.lineage if r.generation > before.generation]
        assert after and after[0] == resumed[0]["step"] + 1  # from the checkpoint, not step 1
        assert history.ok and history.steps == list(range(1, 161)) and not history.lost
    finally:
        server.stop()


def kinds(client, job_id: str) -> list[str]:
    return [e.kind for e in client.watch(job_id, follow=False)]
