"""Restart budgets by cause, and both paths by which a node is found lost."""

from __future__ import annotations

import signal
import textwrap
from pathlib import Path

import pytest

from contract.states import JobState
from tests.integration.harness import start_coordd, wait_for

JOBS = Path(__file__).parents[1] / "integration" / "jobs"


def job_file(tmp_path: Path, script: str, body: str) -> Path:
    (tmp_path / script).write_text((JOBS / script).read_text())
    path = tmp_path / "job.toml"
    path.write_text(textwrap.dedent(body))
    return path


def generations(client, job_id: str) -> list[dict]:
    return [e.data | {"generation": e.generation}
            for e in client.watch(job_id, follow=False) if e.kind == "generation.started"]


@pytest.mark.timeout(120)
def test_worker_failures_restart_the_job_up_to_max_restarts(client, tmp_path):
    job = job_file(tmp_path, "flaky.py", """
        name = "flaky"
        run = "python flaky.py 2"
        max_restarts = 2
        [nodes]
        count = 2
    """)
    record = client.wait(client.submit(job).id, timeout=100)
    assert record.state == JobState.SUCCEEDED
    assert record.generation == 3 and record.restarts == 2
    causes = [g["cause"] for g in generations(client, record.id)]
    assert causes == ["start", "worker_failed", "worker_failed"]


@pytest.mark.timeout(120)
def test_a_job_that_keeps_failing_ends_failed_with_the_reason(coordd, client, tmp_path):
    job = job_file(tmp_path, "flaky.py", """
        name = "broken"
        run = "python flaky.py 99"
        max_restarts = 1
        [nodes]
        count = 2
    """)
    record = client.wait(client.submit(job).id, timeout=100)
    assert record.state == JobState.FAILED
    assert record.restarts == 1 and record.generation == 2
    assert "rank 0" in record.reason and "code 3" in record.reason
    assert "max_restarts=1" in record.reason
    status = coordd.cli("status", record.id)
    assert "simulated bug: exiting 3" in status.stdout


def _start_living_job(client, tmp_path, count=3, minimum=2):
    job = job_file(tmp_path, "heartbeat.py", f"""
        name = "living"
        run = "python heartbeat.py"
        [nodes]
        count = {count}
        min = {minimum}
    """)
    record = client.submit(job)
    wait_for(lambda: client.get(record.id).state == JobState.RUNNING, 60,
             what="the job to run")
    return client.get(record.id)


@pytest.mark.timeout(180)
@pytest.mark.parametrize("sig, cause_hint", [(signal.SIGKILL, "stream"),
                                             (signal.SIGSTOP, "heartbeat")])
def test_a_lost_node_is_detected_and_replaced(coordd, client, tmp_path, sig, cause_hint):
    record = _start_living_job(client, tmp_path)
    victim = record.node_ids[0]  # the master: the new one must be elsewhere
    coordd.kill_node(victim, sig)
    try:
        wait_for(lambda: client.get(record.id).generation >= 2, 60,
                 what="the group to re-form without the lost node")
        gen2 = generations(client, record.id)[1]
        assert gen2["cause"] == "node_lost" and victim not in gen2["new_members"]
        assert len(gen2["new_members"]) == 2 and gen2["master"].split(":")[0] == "127.0.0.1"
        lost_event = next(e for e in client.watch(record.id, follow=False)
                          if e.kind == "state" and "RECONFIGURING" in e.message)
        assert victim in lost_event.message
        # The replacement joins and the job grows back to its target.
        wait_for(lambda: len(client.get(record.id).node_ids) == 3 and
                 client.get(record.id).state == JobState.RUNNING, 90,
                 what="the job to grow back to 3 nodes")
        last = generations(client, record.id)[-1]
        assert last["cause"] == "scale_up" and victim not in last["new_members"]
        log = coordd.log_path.read_text()
        assert cause_hint in log
        assert client.get(record.id).restarts == 0
    finally:
        if sig == signal.SIGSTOP:
            coordd.kill_node(victim, signal.SIGKILL)
        client.cancel(record.id)
