"""What a job's worker inherits from its agent."""

import os

import pytest

from contract.workerenv import node_env


def test_workers_do_not_inherit_the_agent_token(monkeypatch):
    monkeypatch.setenv("COORD_TOKEN", "agent-secret")
    monkeypatch.setenv("SOME_SETTING", "kept")
    env = node_env({"JOB_VAR": "1"})
    assert "COORD_TOKEN" not in env
    assert env["SOME_SETTING"] == "kept" and env["JOB_VAR"] == "1"


def test_threads_follow_torchrun_unless_the_node_has_a_share_of_cores(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert "OMP_NUM_THREADS" not in node_env({}, workers=1)  # torchrun leaves one alone
    assert node_env({}, workers=4)["OMP_NUM_THREADS"] == "1"
    assert node_env({}, workers=2, cpus=8)["OMP_NUM_THREADS"] == "4"  # a local node's share
    assert node_env({}, workers=3, cpus=2)["OMP_NUM_THREADS"] == "1"
    assert node_env({"OMP_NUM_THREADS": "6"}, workers=4, cpus=8)["OMP_NUM_THREADS"] == "6"


def test_every_variable_coordd_sets_is_in_the_one_table():
    from contract.workerenv import TABLE, rank_env, replica_env

    names = {*rank_env(rank=3, world_size=4, nproc_per_node=2, master=("h", 1), restarts=0,
                       max_restarts=0, job_id="j"),
             *replica_env(host="h", rank=3, lighthouse="l:1", min_replicas=2, joining=False,
                          replica_only=True, replicas=4, pause_s=2.0)}
    assert names <= {v.name for v in TABLE}
    assert set(node_env({}, workers=2)) - set(os.environ) <= {v.name for v in TABLE}


def test_the_docs_name_every_variable_a_worker_gets():
    from pathlib import Path

    from contract.workerenv import TABLE

    text = (Path(__file__).parents[2] / "docs" / "worker-environment.md").read_text()
    assert [v.name for v in TABLE if f"`{v.name}`" not in text] == []


@pytest.mark.parametrize("name", ["COORD_NODE_HOST", "COORD_SNAPSHOT_DIR", "COORD_LIFELINE_FD",
                                  "COORD_FT_REPLICAS"])
def test_a_job_may_not_set_a_variable_coord_sets(name):
    """Refused with the name, not silently overwritten on the node."""
    from contract.errors import InvalidSpec
    from contract.spec import parse_spec

    with pytest.raises(InvalidSpec, match=name):
        parse_spec({"name": "a", "run": "x", "env": {name: "1"}}, "job.toml")
