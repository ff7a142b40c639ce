"""An agent fetching its job's bundle while coordd restarts: the fetch waits for coordd to come
back (real gRPC over a loopback socket), and a generation stopped meanwhile is never started."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import grpc
import pytest

from agent.connection import Connection
from agent.outbox import Outbox
from agent.supervisor import Supervisor
from contract import bundle
from coord.v1 import agent_pb2, agent_pb2_grpc, types_pb2


class BundleServer(agent_pb2_grpc.AgentServiceServicer):
    """coordd's FetchBundle and nothing else: one known bundle, NOT_FOUND for any other."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    async def FetchBundle(self, request, context):
        if request.digest != bundle.digest(self.data):
            await context.abort(grpc.StatusCode.NOT_FOUND, f"no bundle {request.digest}")
        yield agent_pb2.BundleChunk(data=self.data)


async def serve(port: int, data: bytes) -> grpc.aio.Server:
    server = grpc.aio.server()
    agent_pb2_grpc.add_AgentServiceServicer_to_server(BundleServer(data), server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    return server


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def connection(port: int) -> Connection:
    return Connection(f"127.0.0.1:{port}", "token", "node-a", "127.0.0.1",
                      types_pb2.Resources(), Outbox(), None, 1.0, insecure=True)


def job_bundle(tmp_path: Path) -> bytes:
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "train.py").write_text("print('hi')\n")
    return bundle.pack(tmp_path / "src")


@pytest.mark.timeout(30)
async def test_a_bundle_fetch_waits_for_coordd_to_come_back(tmp_path):
    data, port = job_bundle(tmp_path), free_port()
    conn = connection(port)
    fetch = asyncio.create_task(conn.fetch_bundle("job", bundle.digest(data)))
    await asyncio.sleep(1.0)  # coordd is down for a second: nothing listens on its port
    assert not fetch.done(), "the fetch gave up while coordd was down"
    server = await serve(port, data)
    try:
        assert await asyncio.wait_for(fetch, 20) == data
    finally:
        await server.stop(None)
        await conn.channel.close()


@pytest.mark.timeout(30)
async def test_a_missing_bundle_is_an_error_at_once(tmp_path):
    port = free_port()
    server = await serve(port, job_bundle(tmp_path))
    conn = connection(port)
    try:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await asyncio.wait_for(conn.fetch_bundle("job", "0" * 64), 5)
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    finally:
        await server.stop(None)
        await conn.channel.close()


@pytest.mark.timeout(30)
async def test_a_generation_stopped_while_its_bundle_is_fetched_is_not_started(tmp_path):
    data, fetching, released = job_bundle(tmp_path), asyncio.Event(), asyncio.Event()

    async def slow_fetch(job_id: str, digest: str) -> bytes:
        fetching.set()
        await released.wait()  # coordd is restarting
        return data

    outbox = Outbox()
    supervisor = Supervisor(tmp_path / "node", outbox, slow_fetch)
    supervisor.warm = None
    start = agent_pb2.StartWorkers(
        job_id="job", generation=1, command="sleep 30", bundle_digest=bundle.digest(data),
        workers=[agent_pb2.WorkerSpec(rank=0, env={"COORD_JOB_ID": "job",
                                                   "COORD_NODE_ID": "node-a"})])
    starting = asyncio.create_task(supervisor.start(start))
    await asyncio.wait_for(fetching.wait(), 5)
    await supervisor.stop("job", 1, grace_s=1.0)  # the restarted coordd stops generation 1
    released.set()
    await asyncio.wait_for(starting, 10)
    try:
        assert supervisor.running() == []
        [change] = [m.worker_state for m in drain(outbox) if m.HasField("worker_state")]
        assert change.phase == agent_pb2.WORKER_PHASE_FAILED_TO_START
        assert change.generation == 1 and "stopped before it started" in change.detail
        await supervisor.start(start)  # a later start is not held against the old stop
        assert [w.generation for w in supervisor.running()] == [1]
    finally:
        await supervisor.close(1.0)


def drain(outbox: Outbox) -> list[agent_pb2.AgentMessage]:
    messages = []
    while not outbox.queue.empty():
        messages.append(outbox.queue.get_nowait())
    return messages
