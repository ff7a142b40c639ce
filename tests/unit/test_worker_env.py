"""What a job's worker inherits from its agent."""

import os

from agent.supervisor import worker_env


def test_workers_do_not_inherit_the_agent_token(monkeypatch):
    monkeypatch.setenv("COORD_TOKEN", "agent-secret")
    monkeypatch.setenv("SOME_SETTING", "kept")
    env = worker_env({"JOB_VAR": "1"})
    assert "COORD_TOKEN" not in env
    assert env["SOME_SETTING"] == "kept" and env["JOB_VAR"] == "1"


def test_threads_follow_torchrun_unless_the_node_has_a_share_of_cores(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert "OMP_NUM_THREADS" not in worker_env({}, workers=1)  # torchrun leaves one alone
    assert worker_env({}, workers=4)["OMP_NUM_THREADS"] == "1"
    assert worker_env({}, workers=2, cpus=8)["OMP_NUM_THREADS"] == "4"  # a local node's share
    assert worker_env({}, workers=3, cpus=2)["OMP_NUM_THREADS"] == "1"
    assert worker_env({"OMP_NUM_THREADS": "6"}, workers=4, cpus=8)["OMP_NUM_THREADS"] == "6"


def test_every_variable_coordd_sets_is_in_the_one_table():
    from coordinator.launching import replica_env
    from coordinator.spec import JobSpec
    from coordinator.workerenv import TABLE, rank_env

    spec = JobSpec(name="a", run="x")
    names = {*rank_env(rank=3, world_size=4, nproc_per_node=2, master=("h", 1), restarts=0,
                       max_restarts=0, job_id="j"),
             *replica_env("h", 3, "l:1", spec, joining=False, replica_only=True,
                         replicas=4)}
    assert names <= {v.name for v in TABLE}
    assert set(worker_env({}, workers=2)) - set(os.environ) <= {v.name for v in TABLE}


def test_the_docs_name_every_variable_a_worker_gets():
    from pathlib import Path

    from coordinator.workerenv import TABLE

    text = (Path(__file__).parents[2] / "docs" / "worker-environment.md").read_text()
    assert [v.name for v in TABLE if f"`{v.name}`" not in text] == []
