"""The node lifecycle in coordd's registry, on a real store: dead nodes are removed after the
retention (in batches, members of live jobs kept, their runners told), a hand-started node
that was lost registers again once it runs no old worker, and failed agent streams are
logged without flooding."""

from __future__ import annotations

import asyncio
import time

import pytest
from structlog.testing import capture_logs

from contract.states import JobState, NodeState
from coord.v1 import agent_pb2
from coordinator.client.clinodes import render
from coordinator.client.cliout import NODE_DEFAULT
from coordinator.client.sdktypes import NodePage
from coordinator.metrics import Metrics
from coordinator.nodes import NodeRegistry
from coordinator.providers.sim import SimProvider
from coordinator.retention import NodeRetention
from coordinator.settings import CoorddSettings
from coordinator.store import JobRecord, NodeRecord, Store
from coordinator.streamlog import StreamFailures

RETENTION_S = 600.0


@pytest.fixture
async def registry(tmp_path):
    store = await Store.open(tmp_path / "coord.db")
    settings = CoorddSettings(state_dir=tmp_path, node_retention_s=RETENTION_S)
    nodes = NodeRegistry(store, settings, {"sim": SimProvider(tmp_path / "spool")},
                         lambda node, view: None, Metrics())
    nodes.forgotten = []
    nodes.on_forget = lambda job_id, ids: nodes.forgotten.append((job_id, sorted(ids)))
    yield nodes
    await nodes.close()
    await store.close()


async def add(registry: NodeRegistry, node_id: str, state: NodeState, since: float,
              job_id: str | None = None, provider: str = "static") -> NodeRecord:
    node = NodeRecord(id=node_id, provider=provider, state=state, job_id=job_id,
                      state_since=since)
    registry.nodes[node.id] = node
    await registry.writer.durable(node)
    return node


async def test_dead_nodes_leave_after_the_retention_unless_a_live_job_counts_them(registry):
    now = time.time()
    old = now - RETENTION_S - 1
    store = registry.store
    await store.insert_job(JobRecord(id="live", name="live", spec_json="{}",
                                     state=JobState.RUNNING, node_ids=["member"]))
    await store.insert_job(JobRecord(id="done", name="done", spec_json="{}",
                                     state=JobState.SUCCEEDED, node_ids=["done-member"]))
    await add(registry, "member", NodeState.LOST, old, "live")       # still counted: kept
    await add(registry, "recent", NodeState.LOST, now - 5, "live")   # not long enough: kept
    await add(registry, "alive", NodeState.READY, old)
    await add(registry, "done-member", NodeState.GONE, old, "done")
    # a whole load test's worth of lost pool nodes: more than one batch
    for i in range(1_200):
        await add(registry, f"pool-{i:05d}", NodeState.LOST, old)
    await add(registry, "spare", NodeState.LOST, old, "live")        # not a member: removed

    removed = await NodeRetention(registry, store, registry.settings).sweep(now)

    assert removed == 1_202
    left = {n.id for n in await store.list_nodes(include_gone=True)}
    assert left == {"member", "recent", "alive"}
    assert set(registry.nodes) == left
    assert ("live", ["spare"]) in registry.forgotten and ("done", ["done-member"]) in \
        registry.forgotten


async def test_a_node_that_registered_again_is_not_removed(registry):
    now = time.time()
    await add(registry, "back", NodeState.LOST, now - RETENTION_S - 1)
    await registry.register(agent_pb2.Register(node_id="back", incarnation="2"))
    await NodeRetention(registry, registry.store, registry.settings).sweep(now)
    assert registry.nodes["back"].state == NodeState.READY
    await registry.writer.durable(registry.nodes["back"])
    assert [n.state for n in await registry.store.list_nodes()] == [NodeState.READY]


def messages(session) -> list[str]:
    found = []
    while not session.outbox.empty():
        message = session.outbox.get_nowait()
        found.append(message.WhichOneof("body") if message else "closed")
    return found


async def test_a_hand_started_node_that_was_lost_registers_again_as_a_fresh_node(registry):
    await add(registry, "host-7", NodeState.LOST, time.time(), job_id="old-job")
    with capture_logs() as logs:
        session = await registry.register(agent_pb2.Register(node_id="host-7", incarnation="b"))
    node = registry.nodes["host-7"]
    assert (node.state, node.job_id, node.incarnation) == (NodeState.READY, None, "b")
    assert registry.sessions["host-7"] is session and not session.closed
    assert ("old-job", ["host-7"]) in registry.forgotten
    assert [e["decision"] for e in logs if e["event"] == "node.rejoin"] == ["fresh"]


async def test_a_lost_node_still_running_old_workers_must_stop_them_first(registry):
    await add(registry, "host-8", NodeState.LOST, time.time())
    running = [agent_pb2.RunningWorker(job_id="j", generation=3, rank=1, pid=9)]
    session = await registry.register(agent_pb2.Register(node_id="host-8", running=running))
    stop = session.outbox.get_nowait().stop
    assert (stop.job_id, stop.grace_s) == ("j", 0) and stop.generation >= 3
    assert messages(session) == ["closed"]  # no Drain: it comes back once they are gone
    assert registry.nodes["host-8"].state == NodeState.LOST
    assert "host-8" not in registry.sessions

    session = await registry.register(agent_pb2.Register(node_id="host-8"))
    assert registry.nodes["host-8"].state == NodeState.READY and not session.closed


async def test_a_node_a_provider_started_is_refused_for_good(registry):
    await add(registry, "node-sim-1", NodeState.LOST, time.time(), "j", provider="sim")
    session = await registry.register(agent_pb2.Register(node_id="node-sim-1"))
    assert messages(session) == ["drain", "closed"]
    assert registry.nodes["node-sim-1"].state == NodeState.LOST


async def test_thousands_of_stream_failures_make_a_few_log_lines_and_a_summary():
    metrics = Metrics()
    failures = StreamFailures(metrics.load.stream_failures, window_s=0.2, burst=5)
    with capture_logs() as logs:
        for i in range(10_000):
            failures.record("cancelled" if i % 2 else "ConnectionError", node=f"n{i}")
        deadline = time.monotonic() + 5
        while not any(e["event"] == "agent.stream_failures" for e in logs):
            assert time.monotonic() < deadline, "no summary"
            await asyncio.sleep(0.02)
    assert len([e for e in logs if e["event"] == "agent.stream_failed"]) == 5
    [summary] = [e for e in logs if e["event"] == "agent.stream_failures"]
    assert summary["more"] == 9_995 and sum(summary["by_cause"].values()) == 9_995
    counted = metrics.registry.get_sample_value("coord_agent_stream_failures_total",
                                                {"cause": "cancelled"})
    assert counted == 5_000


async def test_a_page_of_nodes_counts_them_all_by_state_and_job(registry):
    for i in range(30):
        await add(registry, f"n{i:02d}", NodeState.LOST if i % 3 else NodeState.READY,
                  time.time(), "j" if i < 10 else None)
    store = registry.store
    page = await store.list_nodes(limit=5, offset=10)
    assert [n.id for n in page] == [f"n{i:02d}" for i in range(10, 15)]
    counts = {(job, state): c for job, state, c in await store.count_nodes()}
    assert counts == {("j", NodeState.READY): 4, ("j", NodeState.LOST): 6,
                      ("", NodeState.READY): 6, ("", NodeState.LOST): 14}
    text = render(NodePage([], 30, counts), NODE_DEFAULT, 0)
    assert text.splitlines()[0] == "30 nodes: READY 10, LOST 20"
