"""Machine loss with the elastic example: the job finishes, no committed step is skipped or
repeated, little work is lost, and a frozen node that wakes up changes nothing."""

from __future__ import annotations

import os
import random
import re
import shutil
import signal
import textwrap
from pathlib import Path

import pytest

from contract.states import JobState
from coordinator.providers.procs import session_pids
from tests.integration.harness import ROOT, start_coordd, wait_for
from trainer.elastic import committed_history

CKPT_EVERY = 10
STEPS = 300


@pytest.fixture
def coordd(tmp_path):
    server = start_coordd(tmp_path / "state", "--heartbeat-timeout", "3",
                          env={"COORDD_STOP_GRACE_S": "3", "COORDD_SCALE_UP_SETTLE_S": "1"})
    yield server
    server.stop()


def submit_training(client, tmp_path: Path, count=3, minimum=2, step_sleep=0.03):
    work = tmp_path / "job"
    shutil.copytree(ROOT / "examples" / "elastic", work)
    (work / "job.toml").write_text(textwrap.dedent(f"""
        name = "elastic"
        run = "python train.py --steps {STEPS} --ckpt-every {CKPT_EVERY} --step-sleep {step_sleep}"
        max_restarts = 0
        [nodes]
        count = {count}
        min = {minimum}
        [fault_tolerance]
        mode = "restart"  # these tests are about the restart path; see test_inprocess.py
    """))
    return client.submit(work / "job.toml")


def ckpt_dir(coordd, job_id: str) -> Path:
    return coordd.state_dir / "checkpoints" / job_id


def reached(coordd, job_id: str, step: int) -> bool:
    lineage = committed_history(ckpt_dir(coordd, job_id)).lineage
    return bool(lineage) and lineage[-1].step >= step


def assert_trained_without_gaps(coordd, job_id: str, max_lost: int | None) -> None:
    history = committed_history(ckpt_dir(coordd, job_id))
    assert history.ok, (history.gaps, history.repeats)
    assert history.steps == list(range(1, STEPS + 1))
    if max_lost is not None:
        assert len(history.lost) <= max_lost, [r.step for r in history.lost]
    assert history.lineage[-1].loss < history.lineage[0].loss


@pytest.mark.timeout(240)
def test_a_sigkill_one_of_three_nodes_at_a_random_step(coordd, client, tmp_path):
    record = submit_training(client, tmp_path)
    kill_at = random.Random().randint(20, 150)
    wait_for(lambda: reached(coordd, record.id, kill_at), 90, what=f"step {kill_at}")
    job = client.get(record.id)
    victim = random.choice(list(job.node_ids))
    coordd.kill_node(victim, signal.SIGKILL)
    final = client.wait(record.id, timeout=180)
    assert final.state == JobState.SUCCEEDED, final.reason
    assert final.restarts == 0  # a lost machine never costs a restart
    assert_trained_without_gaps(coordd, record.id, max_lost=CKPT_EVERY)


@pytest.mark.timeout(240)
def test_b_two_of_three_lost_with_min_two_waits_for_a_replacement(coordd, client, tmp_path):
    record = submit_training(client, tmp_path)
    wait_for(lambda: reached(coordd, record.id, 40), 90, what="step 40")
    first = list(client.get(record.id).node_ids)
    for victim in first[:2]:
        coordd.kill_node(victim, signal.SIGKILL)
    final = client.wait(record.id, timeout=180)
    assert final.state == JobState.SUCCEEDED, final.reason
    events = list(client.watch(record.id, follow=False))
    starts = [e for e in events if e.kind == "generation.started"]
    resumed = re.search(r"on (\d+) node", starts[1].message)
    assert int(resumed[1]) >= 2, starts[1].message  # never ran below the minimum
    newcomers = set(final.node_ids) - set(first)
    assert newcomers, "the job resumed on a replacement node"
    assert any(e.kind == "nodes.requested" for e in events[events.index(starts[0]):])
    assert_trained_without_gaps(coordd, record.id, max_lost=CKPT_EVERY)


@pytest.mark.timeout(240)
def test_c_a_frozen_node_is_replaced_and_fenced_when_it_wakes(coordd, client, tmp_path):
    record = submit_training(client, tmp_path, step_sleep=0.05)
    wait_for(lambda: reached(coordd, record.id, 30), 90, what="step 30")
    frozen = client.get(record.id).node_ids[0]  # rank 0: the one that commits checkpoints
    frozen_sid = coordd.node_pid(frozen)
    coordd.kill_node(frozen, signal.SIGSTOP)
    wait_for(lambda: client.get(record.id).generation >= 2, 60, what="re-formation")
    wait_for(lambda: any(p.name.endswith(f"-g{client.get(record.id).generation}.pt")
                         for p in ckpt_dir(coordd, record.id).glob("ckpt-*.pt")), 60,
             what="a checkpoint from the new generation")
    coordd.kill_node(frozen, signal.SIGCONT)  # it wakes up, still believing it is rank 0
    final = client.wait(record.id, timeout=180)
    assert final.state == JobState.SUCCEEDED, final.reason
    assert frozen not in final.node_ids
    wait_for(lambda: not session_pids(frozen_sid), 40, what="the stale node's processes to end")
    history = committed_history(ckpt_dir(coordd, record.id))
    assert history.steps == list(range(1, STEPS + 1)) and not history.gaps
    for path in ckpt_dir(coordd, record.id).glob("ckpt-*.pt"):
        assert not path.name.endswith("-g1.pt"), f"stale generation committed {path.name}"


@pytest.mark.timeout(240)
def test_a_node_that_is_shut_down_gracefully_loses_no_step(coordd, client, tmp_path):
    """SIGTERM to a node's agent (a machine shutting down): it announces that it is leaving,
    every rank stops at the same step and commits it, and the job goes on without it."""
    record = submit_training(client, tmp_path)
    wait_for(lambda: reached(coordd, record.id, 40), 90, what="step 40")
    leaving = client.get(record.id).node_ids[1]
    os.kill(coordd.node_pid(leaving), signal.SIGTERM)
    final = client.wait(record.id, timeout=180)
    assert final.state == JobState.SUCCEEDED, final.reason
    causes = [e.data.get("cause") for e in client.watch(record.id, follow=False)
              if e.kind == "generation.started"]
    assert causes[:2] == ["start", "node_leaving"]
    history = committed_history(ckpt_dir(coordd, record.id))
    assert history.steps == list(range(1, STEPS + 1))
    assert history.lost == [], [r.step for r in history.lost]  # zero committed steps lost
