"""coordd is SIGKILLed mid-training and started again on the same state directory: the
workers never stop, agents reconnect, and the job finishes in its first generation."""

from __future__ import annotations

import os
import shutil
import signal
import textwrap

import pytest

from contract.states import JobState, NodeState
from tests.integration.harness import ROOT, job_pids, start_coordd, wait_for
from tests.net import free_port
from trainer.elastic import committed_history


@pytest.mark.timeout(240)
def test_training_survives_a_coordd_crash_without_restarting_workers(tmp_path):
    listen = f"127.0.0.1:{free_port()}"
    state = tmp_path / "state"
    coordd = start_coordd(state, listen=listen)
    work = tmp_path / "job"
    shutil.copytree(ROOT / "examples" / "elastic", work)
    (work / "job.toml").write_text(textwrap.dedent("""
        name = "survivor"
        run = "python train.py --steps 250 --ckpt-every 25 --step-sleep 0.04"
        [nodes]
        count = 3
        [fault_tolerance]
        mode = "restart"  # one group of 3 (the in-process case is in test_inprocess.py)
    """))
    try:
        with coordd.client() as client:
            job = client.submit(work / "job.toml")
            ckpt = state / "checkpoints" / job.id
            wait_for(lambda: (h := committed_history(ckpt).lineage) and h[-1].step >= 30, 90,
                     what="step 30")
            workers = sorted(job_pids(job.id))
            events_before = len(list(client.watch(job.id, follow=False)))
        coordd.process.send_signal(signal.SIGKILL)
        coordd.process.wait()
        down_at = committed_history(ckpt).lineage[-1].step
        wait_for(lambda: committed_history(ckpt).lineage[-1].step >= down_at + 20, 60,
                 what="training to go on while coordd is down")
        coordd = start_coordd(state, listen=listen)
        assert sorted(job_pids(job.id)) == workers  # the same processes, still training
        with coordd.client() as client:
            final = client.wait(job.id, timeout=150)
            assert final.state == JobState.SUCCEEDED, final.reason
            assert final.generation == 1  # never re-formed: no worker was restarted
            assert len(list(client.watch(job.id, follow=False))) > events_before
            printed = {int(l.text.split()[0][5:]) for l in client.logs(job.id, rank=0)
                       if l.text.startswith("step=")}
            assert printed == set(range(10, 251, 10))  # lines from the outage arrived too
        history = committed_history(ckpt)
        assert history.ok and history.steps == list(range(1, 251)) and not history.lost
    finally:
        coordd.stop()


@pytest.mark.timeout(120)
def test_a_restarted_coordd_stops_the_local_nodes_it_inherited(tmp_path):
    """Local nodes started by a coordd that crashed are taken over by the next one: stopping
    that one cleanly leaves none of them (nor their workers) running."""
    listen, state = f"127.0.0.1:{free_port()}", tmp_path / "state"
    coordd = start_coordd(state, listen=listen)
    (tmp_path / "job.toml").write_text('name = "sleeper"\nrun = "sleep 600"\n[nodes]\ncount = 2\n')
    with coordd.client() as client:
        job = client.submit(tmp_path / "job.toml")
        wait_for(lambda: len(job_pids(job.id)) >= 2, 60, what="the workers to start")
        agents = [coordd.node_pid(n) for n in client.get(job.id).node_ids]
    coordd.process.send_signal(signal.SIGKILL)
    coordd.process.wait()
    coordd = start_coordd(state, listen=listen)
    try:
        with coordd.client() as client:
            wait_for(lambda: all(n.state == NodeState.ASSIGNED
                                 for n in client.nodes(job.id)), 30, what="the agents to return")
    finally:
        coordd.stop()
    assert not job_pids(job.id)
    assert not [pid for pid in agents if os.path.exists(f"/proc/{pid}")]


REPORTER = """import os, pathlib, time
from contract import control
# Rank 1 says it joined the quorum service only once the test lets it (after coordd restarted).
while os.environ["RANK"] == "1" and not pathlib.Path(os.environ["GO"]).exists():
    time.sleep(0.1)
control.emit("inprocess", replica=int(os.environ["RANK"]))
time.sleep(600)
"""


@pytest.mark.timeout(120)
def test_a_restarted_coordd_remembers_which_workers_joined_the_quorum_service(tmp_path):
    """Auto mode confirms in-process recovery once every worker has said it joined the quorum
    service, and each says so once: a report made before a coordd crash must still count."""
    pytest.importorskip("torchft")  # auto mode is restart where coordd has no torchft
    listen, state = f"127.0.0.1:{free_port()}", tmp_path / "state"
    go = tmp_path / "go"
    (tmp_path / "reporter.py").write_text(REPORTER)
    (tmp_path / "job.toml").write_text(textwrap.dedent(f"""
        name = "reporter"
        run = "python reporter.py"
        [nodes]
        count = 2
        [env]
        GO = "{go}"
    """))
    coordd = start_coordd(state, listen=listen)
    try:
        with coordd.client() as client:
            job = client.submit(tmp_path / "job.toml")
            wait_for(lambda: kinds(client, job.id).count("inprocess.joined") == 1, 60,
                     what="rank 0's report")
        coordd.process.send_signal(signal.SIGKILL)
        coordd.process.wait()
        coordd = start_coordd(state, listen=listen)
        with coordd.client() as client:
            wait_for(lambda: all(n.state == NodeState.ASSIGNED
                                 for n in client.nodes(job.id)), 30, what="the agents to return")
            go.touch()
            wait_for(lambda: "inprocess.confirmed" in kinds(client, job.id), 30,
                     what="every worker's report to count")
            client.cancel(job.id)
    finally:
        coordd.stop()


def kinds(client, job_id: str) -> list[str]:
    return [e.kind for e in client.watch(job_id, follow=False)]
