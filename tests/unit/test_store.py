"""The store's contract, on SQLite and on PostgreSQL alike (the store_url fixture): what a
caller reads back is what it wrote, a stale write is refused, and log accounting counts
bytes, not characters."""

from __future__ import annotations

import asyncio
import json

import pytest
import sqlalchemy as sa

from contract import events as ev
from contract.errors import Conflict, NotFound
from contract.states import JobState, NodeState
from coordinator.store import JobRecord, LogRecord, NodeRecord, Store


@pytest.fixture
async def store(store_url):
    opened = await Store.open(store_url)
    yield opened
    await opened.close()


async def test_a_job_reads_back_by_id_and_by_its_newest_name(store):
    await store.insert_job(JobRecord(id="j-1", name="train", spec_json="{}", created_at=1.0))
    await store.insert_job(JobRecord(id="j-2", name="train", spec_json="{}", created_at=2.0,
                                     node_ids=["n-1"], failure={"rank": 0}))
    newest = await store.get_job("train")
    assert (newest.id, newest.node_ids, newest.failure) == ("j-2", ["n-1"], {"rank": 0})
    assert (await store.get_job("j-1")).created_at == 1.0
    with pytest.raises(NotFound):
        await store.get_job("nope")


async def test_a_write_from_a_stale_copy_is_refused_and_the_fresh_one_lands(store):
    await store.insert_job(JobRecord(id="j-1", name="j", spec_json="{}"))
    first, second = await store.get_job("j-1"), await store.get_job("j-1")
    first.state = JobState.RUNNING
    await store.save_job(first)
    second.state = JobState.CANCELLED
    with pytest.raises(Conflict):
        await store.save_job(second)
    assert (await store.get_job("j-1")).state == JobState.RUNNING


async def test_listing_hides_finished_jobs_and_gone_nodes_when_asked(store):
    for i, state in enumerate([JobState.SUCCEEDED, JobState.RUNNING]):
        await store.insert_job(JobRecord(id=f"j-{i}", name="j", spec_json="{}", state=state))
    assert [j.id for j in await store.list_jobs(include_finished=False)] == ["j-1"]
    assert await store.job_states(["j-0", "j-1", "x"]) == {"j-0": JobState.SUCCEEDED,
                                                           "j-1": JobState.RUNNING}
    await store.save_node(NodeRecord(id="n-1", provider="local", job_id="j-1"))
    node = NodeRecord(id="n-2", provider="local", job_id="j-1", resources={"gpus": 1})
    await store.save_node(node)
    node.state = NodeState.GONE
    await store.save_node(node)   # an update, not a second row
    assert [n.id for n in await store.list_nodes("j-1")] == ["n-1"]
    assert [n.resources for n in await store.list_nodes(include_gone=True)] == [{}, {"gpus": 1}]


async def test_events_come_back_in_order_after_a_sequence_number(store):
    first = await store.append_event("j-1", ev.NODES_REQUESTED, 0, "one",
                                     ev.NodesRequested(count=1))
    await store.append_event("j-2", ev.RESOURCES_TIGHT, 0, "other job", ev.Notice())
    await store.append_event("j-1", ev.PROVIDER_WARNING, 1, "two", ev.Notice())
    assert [e.message for e in await store.events_after("j-1")] == ["one", "two"]
    assert [e.kind for e in await store.events_after("j-1", first.seq)] == [ev.PROVIDER_WARNING]
    assert json.loads(first.data_json) == {"count": 1}


async def test_logs_keep_order_mark_the_message_applied_and_count_utf8_bytes(store):
    await store.save_node(NodeRecord(id="n-1", provider="local"))
    texts = [(0, "loss 1"), (1, r"été C:\new"), (0, "done")]  # a backslash is no escape
    lines = [LogRecord("j-1", 0, "n-1", rank, 1, seq, 0.0, text)
             for seq, (rank, text) in enumerate(texts)]
    [stored] = await store.append_logs([(lines, "n-1", 7)])
    assert [line.id for line in stored] == sorted(line.id for line in stored)
    assert [line.text for line in await store.read_logs("j-1", rank=0)] == ["loss 1", "done"]
    assert [line.text for line in await store.read_logs("j-1", tail=2)] == [texts[1][1], "done"]
    assert await store.log_bytes("j-1") == sum(len(line.text.encode()) for line in lines)
    assert (await store.list_nodes())[0].applied_seq == 7


async def test_log_lines_of_many_agents_at_once_are_stored_together_and_once(store):
    """A burst of log messages from many nodes: every line stored once, in order per node,
    each node's newest message marked applied; a replay racing its original adds nothing."""
    from coordinator.logwriter import LogWriter
    writer, nodes = LogWriter(store), [NodeRecord(id=f"n-{i}", provider="local")
                                       for i in range(40)]
    await store.save_nodes(nodes)
    commits = []
    sa.event.listen(store.engine.sync_engine, "commit", lambda conn: commits.append(1))

    def message(node: NodeRecord, seq: int) -> list[LogRecord]:
        return [LogRecord("j-1", 0, node.id, 0, 1, seq * 10 + k, 0.0, f"{node.id} {seq}.{k}")
                for k in range(3)]
    sent = [(node, seq) for seq in (1, 2) for node in nodes] + [(nodes[0], 2)]  # a replay
    stored = await asyncio.gather(*(writer.append(n, message(n, seq), seq) for n, seq in sent))
    await writer.close()
    assert sum(map(len, stored)) == 40 * 2 * 3 and stored[-1] == []
    assert len(commits) <= 2  # not one per message
    for node in nodes:
        texts = [line.text for line in await store.read_logs("j-1", node_id=node.id)]
        assert texts == [f"{node.id} {seq}.{k}" for seq in (1, 2) for k in range(3)]
    assert {n.applied_seq for n in await store.list_nodes()} == {2}
