"""A replica coordd no longer counts takes part in no step, in both modes: a worker whose agent
was SIGKILLed leaves before coordd drops its node, and a frozen node (SIGSTOP) costs the
survivors about `heartbeat_timeout_s`, not the collective's timeout, and changes nothing when
it wakes."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from contract.states import JobState
from tests.fault.test_inprocess import (STEPS, assert_no_committed_step_lost, history, reached,
                                        submit, worker_pids)
from tests.integration.harness import start_coordd, wait_for

pytest.importorskip("torchft")

HEARTBEAT_TIMEOUT_S = 2.0


@pytest.fixture
def coordd(tmp_path):
    # A long stop grace: restart mode must not wait it out on a collective that cannot end.
    server = start_coordd(tmp_path / "state", "--heartbeat-timeout", str(HEARTBEAT_TIMEOUT_S),
                          env={"COORDD_STOP_GRACE_S": "20"})
    yield server
    server.stop()


def alive(pid: int) -> bool:
    """Running (a zombie whose parent died is not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z"
    except OSError:
        return False


def dropped_at(client, job_id: str, node: str) -> float | None:
    """When coordd stopped counting `node`: the re-formation without it (in-process), or the
    generation stopped for its loss (restart mode)."""
    for e in client.watch(job_id, follow=False):
        if (e.kind == "generation.reformed" and node in e.message.split("lost ")[-1]) or (
                e.kind == "generation.stopping" and f"lost node {node}" in e.message):
            return e.time.timestamp()
    return None


def worlds(client, job_id: str) -> set[int]:
    """Replicas (in-process) or ranks each step trained with, from the leader's progress lines."""
    return {int(word[6:]) for line in client.logs(job_id) for word in line.text.split()
            if word.startswith("world=")}


@pytest.mark.timeout(180)
@pytest.mark.parametrize("mode", ["inprocess", "restart"])
def test_a_sigkilled_agents_worker_takes_part_in_no_step_once_its_node_is_dropped(
        coordd, client, tmp_path, mode):
    record = submit(client, tmp_path, mode=mode)
    wait_for(lambda: reached(coordd, record.id, 40), 90, what="step 40")
    victim = client.get(record.id).node_ids[1]
    ghosts = worker_pids(record.id)[victim]
    killed = time.time()
    os.kill(coordd.node_pid(victim), signal.SIGKILL)  # the agent alone: its worker lives on
    wait_for(lambda: not any(map(alive, ghosts)), 30, what="the orphaned worker to leave")
    left = time.time()
    dropped = wait_for(lambda: dropped_at(client, record.id, victim), 30,
                       what="coordd to drop the node")
    assert left <= dropped, f"the worker trained {left - dropped:.1f} s after its node was dropped"
    assert left - killed < 2.0
    final = client.wait(record.id, timeout=150)
    assert final.state == JobState.SUCCEEDED, final.reason
    assert victim not in final.node_ids
    assert max(worlds(client, record.id)) <= 3  # never a step with a fourth replica
    assert_trained(coordd, record.id, mode)


def assert_trained(coordd, job_id: str, mode: str) -> None:
    """Every step once; in-process nothing committed is lost, in restart mode at most the
    step in flight (snapshots are taken every step)."""
    if mode == "inprocess":
        assert_no_committed_step_lost(coordd, job_id)
        return
    done = history(coordd, job_id)
    assert done.ok and done.steps == list(range(1, STEPS + 1)), (done.gaps, done.repeats)
    assert len(done.lost) <= 2, [r.step for r in done.lost]


@pytest.mark.timeout(180)
@pytest.mark.parametrize("mode", ["inprocess", "restart"])
def test_a_frozen_node_costs_the_heartbeat_timeout_and_changes_nothing_when_it_wakes(
        coordd, client, tmp_path, mode):
    """SIGSTOP a node's agent and workers: the survivors wait in a collective on it. coordd
    drops it when its heartbeats have been missing `heartbeat_timeout_s`, and the survivors'
    collective is aborted then (in-process: they re-form; restart mode: they are stopped at
    once and restart), not at the collective's timeout or after the stop grace."""
    record = submit(client, tmp_path, mode=mode)
    wait_for(lambda: reached(coordd, record.id, 40), 90, what="step 40")
    frozen = client.get(record.id).node_ids[1]
    before = worker_pids(record.id)
    frozen_at = time.time()
    coordd.kill_node(frozen, signal.SIGSTOP)
    try:
        # The step in flight may still commit: the stall ends at the second step after it.
        wait_for(lambda: len(_steps_after(coordd, record.id, frozen_at)) >= 2, 60,
                 what="the survivors to train again")
        stall = _steps_after(coordd, record.id, frozen_at)[1] - frozen_at
    finally:
        coordd.kill_node(frozen, signal.SIGCONT)
    budget = HEARTBEAT_TIMEOUT_S + (1.5 if mode == "inprocess" else 12.0)  # + re-formation
    assert stall < budget, f"survivors stalled {stall:.1f} s"
    if mode == "inprocess":
        assert all(worker_pids(record.id).get(n) == pids for n, pids in before.items()
                   if n != frozen), "a survivor's worker was restarted"
    wait_for(lambda: not worker_pids(record.id).get(frozen), 60,
             what="the woken node's stale worker to be stopped")
    final = client.wait(record.id, timeout=150)
    assert final.state == JobState.SUCCEEDED, final.reason
    assert frozen not in final.node_ids and final.restarts == 0
    assert max(worlds(client, record.id)) <= 3
    assert_trained(coordd, record.id, mode)


def _steps_after(coordd, job_id: str, t0: float) -> list[float]:
    return sorted(r.t for r in history(coordd, job_id).lineage if r.t > t0)
