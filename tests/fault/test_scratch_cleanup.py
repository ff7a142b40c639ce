"""Nothing a job keeps in a node's memory or temp space outlives it: not on a node SIGKILLed
mid-job, and what an earlier crash left is swept at the next start of coordd and of an agent."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from contract.scratch import MARK
from contract.states import JobState
from coordinator.providers.local import LocalProvider
from tests.integration.harness import ROOT, start_coordd, wait_for

JOBS = Path(__file__).parents[1] / "integration" / "jobs"


@pytest.fixture
def shm(tmp_path, monkeypatch) -> Path:
    """The snapshot root for this test's coordd and agents, in place of the shared one."""
    root = tmp_path / "shm"
    monkeypatch.setenv("COORD_SNAPSHOT_ROOT", str(root))
    return root


def leftovers(state_dir: Path, shm: Path, job_id: str) -> list[Path]:
    return [*shm.glob(f"**/{job_id}"), *state_dir.glob(f"nodes/*/.coord-tmp/{job_id}")]


def finish_a_job(client, tmp_path: Path, name: str, run: str, count: int = 1):
    work = tmp_path / name
    work.mkdir()
    (work / "job.toml").write_text(textwrap.dedent(f"""
        name = "{name}"
        run = "{run}"
        [nodes]
        count = {count}
    """))
    for script in ("lines.py", "sleeper.py"):
        shutil.copy(JOBS / script, work)
    return client.submit(work / "job.toml")


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_a_sigkilled_nodes_snapshots_are_gone_when_the_job_ends(shm, tmp_path):
    coordd = start_coordd(tmp_path / "state", "--heartbeat-timeout", "3",
                          env={"COORDD_STOP_GRACE_S": "3"})
    try:
        with coordd.client() as client:
            work = tmp_path / "job"
            shutil.copytree(ROOT / "examples" / "elastic", work)
            job = client.submit(work / "job-restart.toml")
            wait_for(lambda: len({p.parent for p in shm.glob(f"*/{job.id}/*/*")}) >= 3, 90,
                     what="every node's snapshots")
            coordd.kill_node(client.get(job.id).node_ids[1], signal.SIGKILL)
            final = client.wait(job.id, timeout=150)
            assert final.state == JobState.SUCCEEDED, final.reason
            wait_for(lambda: not leftovers(coordd.state_dir, shm, job.id), 30,
                     what="the job's snapshots and temp files to go")
    finally:
        coordd.stop()
    assert not leftovers(coordd.state_dir, shm, job.id)
    assert list(shm.iterdir()) == []  # nor this coordd's own directory once it stopped


@pytest.mark.timeout(120)
def test_what_a_crash_left_of_ended_jobs_is_swept_when_coordd_and_an_agent_start(
        shm, tmp_path):
    state = tmp_path / "state"
    coordd = start_coordd(state)
    with coordd.client() as client:
        done = client.wait(finish_a_job(client, tmp_path, "done", "python lines.py 1").id, 60)
    coordd.stop()
    me = (state / "coordd-id").read_text().strip()
    ours = LocalProvider(state / "nodes", None, 0).snapshot_root  # this coordd's part of shm
    planted = [mark(ours / done.id, me) / "node-a" / "step-1",
               mark(ours / "unknown-0123abcd", me) / "node-b" / "s",
               mark(state / "nodes" / "node-a" / ".coord-tmp" / done.id, me) / "f",
               shm / f"{done.id}-node-a"]  # the flat layout of agents before marks
    kept = [shm / "coordd-0123456789ab" / "unknown-job-2" / "node-c" / "s",  # another coordd's
            mark(ours / "theirs-0123abcd", "another-coordd") / "n",
            ours / "not-coords", shm / "unknown-0123abcd-node-a"]
    for path in (*planted, *kept):
        path.mkdir(parents=True, exist_ok=True)

    coordd = start_coordd(state)
    agent = None
    try:
        wait_for(lambda: not any(p.exists() for p in planted), 30, what="coordd's sweep")
        assert all(p.exists() for p in kept)  # what is not this coordd's is not its to judge
        with coordd.client() as client:
            running = finish_a_job(client, tmp_path, "running", "python sleeper.py")
            agent_root = tmp_path / "agent-shm"
            planted = [mark(agent_root / done.id, me) / "n" / "s",
                       mark(agent_root / "unknown-0123abcd", me) / "n" / "s"]
            kept = [mark(agent_root / running.id, me) / "n" / "s",
                    mark(agent_root / "theirs-0123abcd", "another-coordd") / "n",
                    agent_root / "coordd-0123456789ab" / "job-1" / "n", agent_root / ("x" * 200)]
            for path in (*planted, *kept):
                path.mkdir(parents=True, exist_ok=True)
            agent = start_agent(coordd, tmp_path / "agent", agent_root)
            wait_for(lambda: not any(p.exists() for p in planted), 30, what="the agent's sweep")
            assert all(p.exists() for p in kept)
            client.cancel(running.id)
    finally:
        if agent is not None:
            agent.send_signal(signal.SIGTERM)
            agent.wait(30)
        coordd.stop()


def mark(folder: Path, coordd_id: str) -> Path:
    """A job folder as an agent of `coordd_id` makes it."""
    folder.mkdir(parents=True)
    (folder / MARK).write_text(coordd_id)
    return folder


def start_agent(coordd, workdir: Path, root: Path) -> subprocess.Popen:
    """A node started by hand on a host that outlived an earlier agent."""
    return subprocess.Popen(
        [sys.executable, "-m", "agent.main", "--coordinator", coordd.address,
         "--token", coordd.agent_token, "--ca", str(coordd.ca_path), "--node-id", "static-1",
         "--workdir", str(workdir), "--host", "127.0.0.1"],
        env={**os.environ, "COORD_SNAPSHOT_ROOT": str(root)},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
