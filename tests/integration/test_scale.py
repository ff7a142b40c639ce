"""coordd with a few hundred simulated agents (bench/scaleagents.py, the `sim` provider): a
silent one is lost in time, and a job of 200 simulated nodes re-forms after a loss, deciding
once per burst of worker exits, not once per exit."""

from __future__ import annotations

import time

import pytest

from bench.scale import spec
from bench.scalerig import Rig
from coordinator.localcluster import wait_for

AGENTS = 300
JOB_NODES = 200
HEARTBEAT_TIMEOUT_S = 2.0
NPROC = 8  # bench.scale.spec's default
TURNS = "coord_reconciler_turns_total"


@pytest.fixture
def rig(tmp_path):
    rig = Rig(tmp_path, env={"COORDD_HEARTBEAT_TIMEOUT_S": str(HEARTBEAT_TIMEOUT_S)})
    yield rig
    rig.close()


def told(rig: Rig, job_id: str, generation: int) -> dict:
    return rig.table("starts", f"{job_id}/{generation}").get(f"{job_id}/{generation}",
                                                            {"count": 0})


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_a_silent_agent_is_lost_in_time_and_a_200_node_job_reforms(rig):
    rig.add_generator("pool", AGENTS)
    wait_for(lambda: rig.total("registered") >= AGENTS, 20, interval=0.1,
             what=f"{AGENTS} agents to register")
    assert rig.count_state("LOST") == 0

    rig.ctl("pool-00007", "silent")
    silent_at = rig.acted_at("pool-00007", "silent")
    assert rig.wait_state("pool-00007", "LOST", 10) - silent_at <= HEARTBEAT_TIMEOUT_S + 1

    with rig.coordd.client() as client:
        submitted = time.time()
        job = client.submit(spec("big", JOB_NODES, "restart"), workdir=rig.workdir)
        first = wait_for(lambda: told(rig, job.id, 1)["count"] >= JOB_NODES and
                         told(rig, job.id, 1), 15, what="StartWorkers on every node")
        assert first["last"] - submitted <= 5
        wait_for(lambda: client.get(job.id).state == "RUNNING", 10, what="the job to run")
        victim = client.get(job.id).node_ids[-1]
        turns = rig.metric(TURNS)
        rig.ctl(victim, "drop")
        lost_at = rig.wait_state(victim, "LOST", 10)
        second = wait_for(lambda: told(rig, job.id, 2)["count"] >= JOB_NODES - 1 and
                          told(rig, job.id, 2), 20, what="the survivors' next StartWorkers")
        assert second["last"] - lost_at <= 3
        assert victim not in client.get(job.id).node_ids
        # The survivors' workers exits (8 each) reach the reconciler in bursts, each burst
        # one decision: one decision per exit would be 1,592 alone.
        assert rig.metric(TURNS) - turns < (JOB_NODES - 1) * NPROC / 4
