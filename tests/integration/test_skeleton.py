"""The walking skeleton, end to end: a real coordd, real agent processes, real workers."""

from __future__ import annotations

import re
import textwrap
import time
from collections import defaultdict
from pathlib import Path

import grpc
import pytest

from contract.states import JobState
from coord.v1 import agent_pb2, agent_pb2_grpc, jobs_pb2, jobs_pb2_grpc
from coordinator.providers.procs import session_pids
from tests.integration.harness import ROOT, job_pids, wait_for

JOBS = Path(__file__).parent / "jobs"


def write_job(tmp_path: Path, body: str, script: str | None = None) -> Path:
    if script:
        (tmp_path / script).write_text((JOBS / script).read_text())
    path = tmp_path / "job.toml"
    path.write_text(textwrap.dedent(body))
    return path


@pytest.mark.timeout(180)
@pytest.mark.parametrize("coordd", ["sqlite", "postgresql"], indirect=True)
def test_example_job_succeeds_and_every_rank_prints_the_sum(coordd, client):
    result = coordd.cli("submit", "examples/allreduce/job.toml", cwd=ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    job_id = re.search(r"submitted (\S+)", result.stdout).group(1)
    job = client.get(job_id)
    assert job.state == JobState.SUCCEEDED
    lines = [l.text for l in client.logs(job_id)]
    for rank in range(3):
        assert any(re.match(rf"rank {rank}/3 on .*sum=\[6\.0, 12\.0, 18\.0, 24\.0\] ok", l)
                   for l in lines), (rank, lines)
    assert "SUCCEEDED" in result.stdout


@pytest.mark.timeout(120)
@pytest.mark.parametrize("coordd", ["sqlite", "postgresql"], indirect=True)
def test_logs_arrive_in_order_per_worker(coordd, client, tmp_path):
    job = write_job(tmp_path, """
        name = "lines"
        run = "python lines.py 400"
        nproc_per_node = 2
        [nodes]
        count = 2
    """, "lines.py")
    record = client.submit(job)
    assert client.wait(record.id, timeout=90).state == JobState.SUCCEEDED
    seen: dict[int, list[int]] = defaultdict(list)
    for line in client.logs(record.id):
        if m := re.match(r"rank=(\d+) line=(\d+)", line.text):
            seen[int(m[1])].append(int(m[2]))
    assert sorted(seen) == [0, 1, 2, 3]
    for rank, numbers in seen.items():
        assert numbers == list(range(400)), f"rank {rank} out of order or incomplete"
    only_rank_2 = [l.text for l in client.logs(record.id, rank=2)]
    assert only_rank_2 and all("rank=2" in t for t in only_rank_2)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("coordd", ["sqlite", "postgresql"], indirect=True)
def test_failing_worker_fails_the_job_and_status_shows_why(coordd, client, tmp_path):
    job = write_job(tmp_path, """
        name = "fails"
        run = "python fail.py"
        [nodes]
        count = 3
    """, "fail.py")
    result = coordd.cli("submit", str(job), timeout=100)
    assert result.returncode == 1, result.stdout + result.stderr
    job_id = re.search(r"submitted (\S+)", result.stdout).group(1)
    record = client.get(job_id)
    assert record.state == JobState.FAILED
    status = coordd.cli("status", job_id)
    assert status.returncode == 0
    assert "rank 1" in status.stdout and "exited with code 1" in status.stdout
    assert "error: shard 7 is corrupt" in status.stdout
    assert "loading shard 7 of the data set" in status.stdout


@pytest.mark.timeout(120)
def test_cancel_stops_every_process_of_the_job(coordd, client, tmp_path):
    job = write_job(tmp_path, """
        name = "sleeper"
        run = "python sleeper.py"
        nproc_per_node = 2
        [nodes]
        count = 2
    """, "sleeper.py")
    record = client.submit(job)
    wait_for(lambda: sum("started child" in l.text for l in client.logs(record.id)) == 4, 60,
             what="all four workers to start their children")
    assert len(job_pids(record.id)) >= 8  # bash, python and its child for each worker
    result = coordd.cli("cancel", record.name, "--reason", "test is done")
    assert result.returncode == 0, result.stderr
    assert client.get(record.id).state == JobState.CANCELLED
    wait_for(lambda: not job_pids(record.id), 30, what="every process of the job to exit")
    agents = [coordd.node_pid(n.id) for n in client.nodes(record.id, include_gone=True)]
    assert len(agents) == 2
    wait_for(lambda: not any(session_pids(pid) for pid in agents), 30,
             what="the nodes' agents to exit")
    assert "test is done" in client.get(record.id).reason


@pytest.mark.timeout(60)
def test_bad_job_file_is_refused_with_the_key_named(coordd, tmp_path):
    job = write_job(tmp_path, """
        name = "bad"
        run = "true"
        nproc_per_node = "two"
        [nodes]
        count = 3
        colour = "blue"
    """)
    result = coordd.cli("submit", str(job))
    assert result.returncode == 2
    assert str(job) in result.stderr
    assert "nproc_per_node" in result.stderr and "nodes.colour" in result.stderr
    assert "unknown key" in result.stderr


@pytest.mark.timeout(60)
def test_coordd_refuses_a_bad_spec_even_from_a_client_that_skips_validation(coordd, client):
    channel = coordd.channel()
    stub = jobs_pb2_grpc.JobServiceStub(channel)
    with pytest.raises(grpc.RpcError) as info:
        stub.SubmitJob(jobs_pb2.SubmitJobRequest(
            spec_json='{"name": "x", "run": "true", "nodes": {"count": -1}}', source="raw.toml"),
            metadata=(("authorization", f"Bearer {coordd.token}"),))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "raw.toml" in info.value.details() and "nodes.count" in info.value.details()
    assert client.jobs() == []


@pytest.mark.timeout(60)
@pytest.mark.parametrize("token", [None, "wrong-token"])
def test_calls_without_the_token_are_refused(coordd, token):
    channel = coordd.channel()
    metadata = (("authorization", f"Bearer {token}"),) if token else ()
    jobs = jobs_pb2_grpc.JobServiceStub(channel)
    agents = agent_pb2_grpc.AgentServiceStub(channel)
    calls = [
        lambda: jobs.ListJobs(jobs_pb2.ListJobsRequest(), metadata=metadata),
        lambda: jobs.SubmitJob(jobs_pb2.SubmitJobRequest(spec_json="{}"), metadata=metadata),
        lambda: list(jobs.WatchJob(jobs_pb2.WatchJobRequest(job="x"), metadata=metadata)),
        lambda: list(agents.Connect(iter([agent_pb2.AgentMessage(
            register=agent_pb2.Register(host="127.0.0.1"))]), metadata=metadata)),
        lambda: list(agents.FetchBundle(agent_pb2.FetchBundleRequest(digest="ab"),
                                        metadata=metadata)),
    ]
    for call in calls:
        with pytest.raises(grpc.RpcError) as info:
            call()
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED


@pytest.mark.timeout(60)
def test_cli_without_token_exits_4_with_a_hint(coordd):
    env_token = coordd.token
    coordd.token = "nope"
    try:
        result = coordd.cli("jobs")
    finally:
        coordd.token = env_token
    assert result.returncode == 4
    assert "COORD_TOKEN" in result.stderr
