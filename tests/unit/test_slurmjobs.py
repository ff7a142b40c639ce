"""The slurm provider's pure parts: the sbatch line and batch script of one node, squeue and
sinfo read back, sbatch's refusals explained, and the job.toml keys."""

from __future__ import annotations

import pytest

from contract.errors import InvalidSpec
from contract.spec import SlurmResources, parse_spec
from coordinator.providers.slurmjobs import (batch_script, dead_nodes, explain_refusal, merged,
                                             parse_squeue, sbatch_argv)

TAG = "coordd=abc"


def test_a_nodes_allocation_is_one_named_unrequeued_task_with_the_jobs_keys():
    res = merged(SlurmResources(partition="low", account="lab", exclusive=False),
                 SlurmResources(partition="gpu", gres="gpu:8", time="2:00:00",
                                sbatch_options=["--mem=0"]))
    argv = sbatch_argv(res, "node-a-1", TAG, "/w/node-a-1", 120)
    assert argv[:2] == ["sbatch", "--parsable"]
    for option in ("--job-name=coord-node-a-1", f"--comment={TAG}", "--nodes=1", "--ntasks=1",
                   "--no-requeue", "--partition=gpu", "--account=lab", "--gres=gpu:8",
                   "--time=2:00:00", "--signal=B:TERM@120", "--output=/w/node-a-1/agent.log",
                   "--mem=0"):
        assert option in argv
    assert "--exclusive" not in argv  # the default's false was kept: the job left it unset
    assert "--exclusive" in sbatch_argv(SlurmResources(), "n", TAG, "/w", 0)


def test_the_batch_script_carries_no_credential_and_execs_the_agent():
    script = batch_script("/w/agent.env", "/opt/v/bin/coord-agent", "10.0.0.5:7070", "node-x",
                          "/w/node-x", 3)
    assert ". /w/agent.env" in script
    assert "exec /opt/v/bin/coord-agent --coordinator 10.0.0.5:7070 --node-id node-x" in script
    assert "TOKEN" not in script and "PEM" not in script


def test_squeue_lines_of_this_coordd_only_by_node():
    out = ("11|coord-node-a|coordd=abc|RUNNING|c1|None\n"
           "12|coord-node-b|coordd=other|RUNNING|c2|None\n"
           "13|train|coordd=abc|RUNNING|c3|None\n"
           "9|coord-node-a|coordd=abc|CANCELLED|c4|None\n"
           "14|coord-node-c|coordd=abc|PENDING||Resources\n")
    jobs = parse_squeue(out, TAG)
    assert sorted(jobs) == ["node-a", "node-c"]
    assert jobs["node-a"].job_id == "11" and not jobs["node-a"].ended
    assert jobs["node-c"].reason == "Resources"


def test_nodes_nothing_runs_on():
    assert dead_nodes("c1|idle\nc2|down*\nc3|allocated\nc4|fail\nc5|mixed*") == \
        {"c2": "down*", "c4": "fail"}


@pytest.mark.parametrize("stderr, res, expected", [
    ("sbatch: error: invalid partition specified: nope\n", SlurmResources(partition="nope"),
     "sbatch refused resources.slurm.partition = 'nope': invalid partition specified: nope"),
    ("sbatch: error: Batch job submission failed: Invalid account or account/partition "
     "combination specified", SlurmResources(account="x"), "resources.slurm.account = 'x'"),
    ("sbatch: error: Batch job submission failed: Requested node configuration is not "
     "available", SlurmResources(gres="gpu:8"), "no node of the partition has what "
     "resources.slurm asks for (gres = 'gpu:8')"),
    ("sbatch: error: Batch job submission failed: Invalid qos specification",
     SlurmResources(), "sbatch refused the allocation: Batch job submission failed"),
])
def test_a_refusal_names_the_key_behind_it(stderr, res, expected):
    assert expected in explain_refusal(stderr, res)


def test_job_toml_keys_are_checked():
    base = {"name": "j", "run": "true", "resources": {"provider": "slurm"}}
    spec = parse_spec({**base, "resources": {"provider": "slurm", "slurm": {
        "partition": "gpu", "gres": "gpu:8", "time": "1-00:00:00"}}}, "job.toml")
    assert spec.resources.slurm.partition == "gpu"
    for slurm, key in [({"partition": "a b"}, "resources.slurm.partition"),
                       ({"sbatch_options": ["--job-name=x"]}, "resources.slurm.sbatch_options"),
                       ({"time": "soon"}, "resources.slurm.time"),
                       ({"nodes": 2}, "resources.slurm.nodes")]:
        with pytest.raises(InvalidSpec, match=key.replace(".", r"\.")):
            parse_spec({**base, "resources": {"provider": "slurm", "slurm": slurm}}, "job.toml")
