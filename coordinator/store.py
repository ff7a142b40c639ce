"""Durable state: jobs, nodes, an append-only event log and worker logs, in SQLite (WAL) or
PostgreSQL (asyncpg); the schema is built by coordinator/migrations, `metadata` mirrors it.

SQLAlchemy Core, the same statements on both backends. Every call takes its own
connection from the pool (never one shared across coroutines). Writes that decide ownership
(job state) are compare-and-set on a version column.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from contract.errors import Conflict, NotFound
from contract.events import Payload
from contract.events import encode as encode_event
from contract.states import JobState, NodeState
from coordinator import migrations

metadata = sa.MetaData()

jobs = sa.Table(
    "jobs", metadata,
    sa.Column("id", sa.String, primary_key=True),
    sa.Column("name", sa.String, nullable=False, index=True),
    sa.Column("spec_json", sa.Text, nullable=False),
    sa.Column("state", sa.String, nullable=False, index=True),
    sa.Column("generation", sa.Integer, nullable=False, default=0),
    sa.Column("reason", sa.Text, nullable=False, default=""),
    sa.Column("restarts", sa.Integer, nullable=False, default=0),
    sa.Column("node_ids", sa.Text, nullable=False, default="[]"),
    sa.Column("failure_json", sa.Text, nullable=False, default="{}"),
    sa.Column("bundle_digest", sa.String, nullable=False, default=""),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("updated_at", sa.Float, nullable=False),
    sa.Column("version", sa.Integer, nullable=False, default=0),
    # The worker generation (the membership epoch the running workers were started in), each
    # member's replica slot and the next free slot: what a restarted coordd resumes from.
    sa.Column("worker_generation", sa.Integer, nullable=False, default=0, server_default="0"),
    sa.Column("slots_json", sa.Text, nullable=False, default="{}", server_default="{}"),
    sa.Column("next_slot", sa.Integer, nullable=False, default=0, server_default="0"),
)

# The intents of a decision's effects (start workers on a node, stop them ...), written in the
# transaction that saves the decision and marked done once performed: a restarted coordd
# performs again those not done.
outbox = sa.Table(
    "outbox", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("job_id", sa.String, nullable=False, index=True),
    sa.Column("kind", sa.String, nullable=False),
    sa.Column("data_json", sa.Text, nullable=False),
    sa.Column("done", sa.Boolean, nullable=False, default=False),
)

nodes = sa.Table(
    "nodes", metadata,
    sa.Column("id", sa.String, primary_key=True),
    sa.Column("job_id", sa.String, nullable=True, index=True),
    sa.Column("provider", sa.String, nullable=False),
    sa.Column("host", sa.String, nullable=False, default=""),
    sa.Column("state", sa.String, nullable=False),
    sa.Column("resources_json", sa.Text, nullable=False, default="{}"),
    sa.Column("provider_json", sa.Text, nullable=False, default="{}"),
    sa.Column("last_heartbeat", sa.Float, nullable=False, default=0.0),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("incarnation", sa.String, nullable=False, default=""),
    sa.Column("applied_seq", sa.Integer, nullable=False, default=0),
    sa.Column("state_since", sa.Float, nullable=False, default=0.0, server_default="0"),
)

events = sa.Table(
    "events", metadata,
    sa.Column("seq", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("job_id", sa.String, nullable=False, index=True),
    sa.Column("time", sa.Float, nullable=False),
    sa.Column("kind", sa.String, nullable=False),
    sa.Column("generation", sa.Integer, nullable=False),
    sa.Column("message", sa.Text, nullable=False),
    sa.Column("data_json", sa.Text, nullable=False),
    sa.Column("epoch", sa.BigInteger, nullable=True),  # the leader's (coordinator/leadership.py)
)

logs = sa.Table(
    "logs", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("job_id", sa.String, nullable=False),
    sa.Column("generation", sa.Integer, nullable=False),
    sa.Column("node_id", sa.String, nullable=False),
    sa.Column("rank", sa.Integer, nullable=False),
    sa.Column("stream", sa.Integer, nullable=False),
    sa.Column("seq", sa.Integer, nullable=False),
    sa.Column("time", sa.Float, nullable=False),
    sa.Column("text", sa.Text, nullable=False),
    sa.Index("logs_by_job", "job_id", "id"),
)

# Leadership of a coordd set on PostgreSQL (coordinator/leadership.py): one lease row, id 1.
leader = sa.Table(
    "leader", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("epoch", sa.BigInteger, nullable=False),
    sa.Column("holder", sa.String, nullable=False),
    sa.Column("address", sa.String, nullable=False),
    sa.Column("renewed_at", sa.Float, nullable=False),
    sa.Column("expires_at", sa.Float, nullable=False),
)

members = sa.Table(
    "members", metadata,
    sa.Column("id", sa.String, primary_key=True),
    sa.Column("address", sa.String, nullable=False),
    sa.Column("started_at", sa.Float, nullable=False),
    sa.Column("seen_at", sa.Float, nullable=False),
)


@dataclasses.dataclass
class JobRecord:
    id: str
    name: str
    spec_json: str
    state: JobState = JobState.PENDING
    generation: int = 0
    reason: str = ""
    restarts: int = 0
    node_ids: list[str] = dataclasses.field(default_factory=list)
    failure: dict[str, Any] = dataclasses.field(default_factory=dict)
    bundle_digest: str = ""
    created_at: float = dataclasses.field(default_factory=time.time)
    updated_at: float = dataclasses.field(default_factory=time.time)
    version: int = 0
    worker_generation: int = 0
    slots: dict[str, int] = dataclasses.field(default_factory=dict)
    next_slot: int = 0

    def to_row(self) -> dict[str, Any]:
        row = dataclasses.asdict(self)
        row["state"] = str(self.state)
        row["node_ids"] = json.dumps(row["node_ids"])
        row["failure_json"] = json.dumps(row.pop("failure"))
        row["slots_json"] = json.dumps(row.pop("slots"))
        return row

    @classmethod
    def from_row(cls, row: Any) -> JobRecord:
        data = dict(row._mapping)
        data["state"] = JobState(data["state"])
        data["node_ids"] = json.loads(data["node_ids"])
        data["failure"] = json.loads(data.pop("failure_json"))
        data["slots"] = json.loads(data.pop("slots_json"))
        return cls(**data)


@dataclasses.dataclass
class NodeRecord:
    id: str
    provider: str
    state: NodeState = NodeState.JOINING
    job_id: str | None = None
    host: str = ""
    resources: dict[str, Any] = dataclasses.field(default_factory=dict)
    provider_data: dict[str, Any] = dataclasses.field(default_factory=dict)
    last_heartbeat: float = 0.0
    created_at: float = dataclasses.field(default_factory=time.time)
    incarnation: str = ""   # the agent process whose messages `applied_seq` counts
    applied_seq: int = 0    # its tracked messages up to here are applied and durable
    state_since: float = dataclasses.field(default_factory=time.time)  # wall time

    def to_row(self) -> dict[str, Any]:
        row = dataclasses.asdict(self)
        row["state"] = str(self.state)
        row["resources_json"] = json.dumps(row.pop("resources"))
        row["provider_json"] = json.dumps(row.pop("provider_data"))
        return row

    @classmethod
    def from_row(cls, row: Any) -> NodeRecord:
        data = dict(row._mapping)
        data["state"] = NodeState(data["state"])
        data["resources"] = json.loads(data.pop("resources_json"))
        data["provider_data"] = json.loads(data.pop("provider_json"))
        return cls(**data)


@dataclasses.dataclass(frozen=True)
class EventRecord:
    seq: int
    job_id: str
    time: float
    kind: str
    generation: int
    message: str
    data_json: str
    epoch: int | None = None


@dataclasses.dataclass(frozen=True)
class LogRecord:
    job_id: str
    generation: int
    node_id: str
    rank: int
    stream: int
    seq: int
    time: float
    text: str
    id: int = 0


_DEAD = [NodeState.LOST.value, NodeState.GONE.value]


def _node_filter(query: sa.Select, job_id: str | None, include_gone: bool) -> sa.Select:
    if job_id:
        query = query.where(nodes.c.job_id == job_id)
    if not include_gone:
        query = query.where(nodes.c.state.not_in([NodeState.GONE.value]))
    return query


async def _insert_many(conn: AsyncConnection, key: sa.Column, rows: list[dict]) -> list[int]:
    """Insert `rows` into `key`'s table in one statement; their keys, in the rows' order.
    One statement, not one per row: a decision on a 1,000-node job records as many intents,
    and a row-by-row insert held SQLite's write lock across as many event-loop turns."""
    if not rows:
        return []
    statement = key.table.insert().returning(key, sort_by_parameter_order=True)
    return list((await conn.execute(statement, rows)).scalars())


def _sqlite_pragmas(dbapi_conn, _record) -> None:
    cursor = dbapi_conn.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.close()


def create_engine(where: Path | str) -> AsyncEngine:
    url = where if isinstance(where, str) else f"sqlite+aiosqlite:///{where}"
    if url.startswith("sqlite"):
        engine = create_async_engine(url)
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        return engine
    # pre_ping: a pooled connection that died with a database restart or failover is
    # replaced instead of failing the caller's first statement.
    return create_async_engine(url, pool_pre_ping=True)


def _utf8_bytes(engine: AsyncEngine, text: sa.ColumnElement) -> sa.ColumnElement:
    if engine.dialect.name == "postgresql":
        return sa.func.octet_length(text)
    return sa.func.length(sa.cast(text, sa.LargeBinary))


class Store:
    def __init__(self, engine: AsyncEngine):
        self.engine = engine
        # Set while this coordd leads a set on PostgreSQL (coordinator/leadership.py): run
        # first in every write transaction, it refuses the write once another took over.
        self.guard: Callable[[AsyncConnection], Awaitable[None]] | None = None
        self.epoch: int | None = None

    @contextlib.asynccontextmanager
    async def _write(self) -> AsyncIterator[AsyncConnection]:
        async with self.engine.begin() as conn:
            if self.guard is not None:
                await self.guard(conn)
            yield conn

    @classmethod
    async def open(cls, where: Path | str) -> Store:
        """A SQLite file (a path) or a database URL (`postgresql+asyncpg://...`), brought to
        the newest schema (coordinator/migrations)."""
        engine = create_engine(where)
        try:
            await migrations.upgrade(engine)
        except BaseException:
            await engine.dispose()
            raise
        return cls(engine)

    async def close(self) -> None:
        await self.engine.dispose()

    # jobs -----------------------------------------------------------------------------
    async def insert_job(self, job: JobRecord) -> None:
        async with self._write() as conn:
            await conn.execute(jobs.insert().values(**job.to_row()))

    async def save_job(self, job: JobRecord) -> None:
        """Compare-and-set on `version`: a stale writer gets Conflict, never a lost update."""
        expected = job.version
        job.version += 1
        job.updated_at = time.time()
        async with self._write() as conn:
            result = await conn.execute(
                jobs.update().where(jobs.c.id == job.id, jobs.c.version == expected)
                .values(**job.to_row()))
        if result.rowcount != 1:
            job.version = expected
            raise Conflict(f"job {job.id} was changed by someone else")

    async def get_job(self, ref: str) -> JobRecord:
        """By id, or by name (the newest job with that name)."""
        async with self.engine.connect() as conn:
            row = (await conn.execute(jobs.select().where(jobs.c.id == ref))).first()
            if row is None:
                row = (await conn.execute(jobs.select().where(jobs.c.name == ref)
                                          .order_by(jobs.c.created_at.desc()).limit(1))).first()
        if row is None:
            raise NotFound(f"no job with id or name {ref!r}")
        return JobRecord.from_row(row)

    async def list_jobs(self, include_finished: bool = True, limit: int = 100) -> list[JobRecord]:
        query = jobs.select().order_by(jobs.c.created_at.desc()).limit(max(1, min(limit, 1000)))
        if not include_finished:
            query = query.where(jobs.c.state.not_in([s.value for s in JobState if s.terminal]))
        async with self.engine.connect() as conn:
            return [JobRecord.from_row(r) for r in await conn.execute(query)]

    async def job_states(self, job_ids: list[str]) -> dict[str, JobState]:
        """The state of each of `job_ids` this store knows, in one query."""
        if not job_ids:
            return {}
        query = sa.select(jobs.c.id, jobs.c.state).where(jobs.c.id.in_(job_ids))
        async with self.engine.connect() as conn:
            return {row.id: JobState(row.state) for row in await conn.execute(query)}

    async def commit(self, job: JobRecord, entries: list[tuple[str, str, Payload]],
                     intents: list[tuple[str, str]]) -> tuple[list[EventRecord], list[int]]:
        """A decision: save the job row (compare-and-set, as save_job), append its events
        (kind, message, payload) and record its intents (kind, data_json), in one transaction."""
        expected, now = job.version, time.time()
        job.version, job.updated_at = expected + 1, now
        rows = [dict(job_id=job.id, time=now, kind=kind, generation=job.generation,
                     message=message, data_json=encode_event(kind, payload))
                for kind, message, payload in entries]
        async with self._write() as conn:
            result = await conn.execute(
                jobs.update().where(jobs.c.id == job.id, jobs.c.version == expected)
                .values(**job.to_row()))
            if result.rowcount != 1:
                job.version = expected
                raise Conflict(f"job {job.id} was changed by someone else")
            seqs = await _insert_many(conn, events.c.seq, rows)
            ids = await _insert_many(conn, outbox.c.id, [
                dict(job_id=job.id, kind=kind, data_json=data, done=False)
                for kind, data in intents])
        return [EventRecord(seq=seq, **row) for seq, row in zip(seqs, rows, strict=True)], ids

    async def intents_done(self, intent_ids: list[int]) -> None:
        if not intent_ids:
            return
        async with self._write() as conn:
            await conn.execute(outbox.update().where(outbox.c.id.in_(intent_ids))
                               .values(done=True))

    async def pending_intents(self, job_id: str) -> list[tuple[int, str, str]]:
        """The job's intents not done, oldest first: (id, kind, data_json)."""
        query = (sa.select(outbox.c.id, outbox.c.kind, outbox.c.data_json)
                 .where(outbox.c.job_id == job_id, outbox.c.done.is_(False)).order_by(outbox.c.id))
        async with self.engine.connect() as conn:
            return [tuple(row) for row in await conn.execute(query)]

    # nodes ----------------------------------------------------------------------------
    async def save_node(self, node: NodeRecord) -> None:
        row = node.to_row()
        async with self._write() as conn:
            updated = await conn.execute(nodes.update().where(nodes.c.id == node.id).values(**row))
            if updated.rowcount == 0:
                await conn.execute(nodes.insert().values(**row))

    async def save_nodes(self, records: list[NodeRecord]) -> None:
        """Insert or update many node records in one transaction."""
        rows = {node.id: node.to_row() for node in records}
        if not rows:
            return
        async with self._write() as conn:
            known = set((await conn.execute(sa.select(nodes.c.id).where(
                nodes.c.id.in_(list(rows))))).scalars())
            if known:
                update = nodes.update().where(nodes.c.id == sa.bindparam("node_id"))
                await conn.execute(update, [{**row, "node_id": node_id}
                                            for node_id, row in rows.items() if node_id in known])
            if fresh := [row for node_id, row in rows.items() if node_id not in known]:
                await conn.execute(nodes.insert(), fresh)

    async def list_nodes(self, job_id: str | None = None, include_gone: bool = False,
                         limit: int = 0, offset: int = 0) -> list[NodeRecord]:
        """Oldest first; `limit` 0: every one."""
        query = _node_filter(nodes.select(), job_id, include_gone).order_by(
            nodes.c.created_at, nodes.c.id)
        if limit > 0:
            query = query.limit(limit).offset(max(0, offset))
        elif offset > 0:
            query = query.offset(offset)
        async with self.engine.connect() as conn:
            return [NodeRecord.from_row(r) for r in await conn.execute(query)]

    async def count_nodes(self, job_id: str | None = None,
                          include_gone: bool = False) -> list[tuple[str, NodeState, int]]:
        """How many nodes each (job id or "", state) has, in one query."""
        query = _node_filter(sa.select(nodes.c.job_id, nodes.c.state, sa.func.count()),
                             job_id, include_gone).group_by(nodes.c.job_id, nodes.c.state)
        async with self.engine.connect() as conn:
            return [(row[0] or "", NodeState(row[1]), row[2]) for row in await conn.execute(query)]

    async def dead_nodes(self, before: float, after_id: str = "",
                         limit: int = 500) -> list[tuple[str, str]]:
        """LOST and GONE nodes in that state since before `before`, by id after `after_id`:
        (id, job id or "")."""
        query = (sa.select(nodes.c.id, nodes.c.job_id)
                 .where(nodes.c.state.in_(_DEAD), nodes.c.state_since < before,
                        nodes.c.id > after_id).order_by(nodes.c.id).limit(limit))
        async with self.engine.connect() as conn:
            return [(row[0], row[1] or "") for row in await conn.execute(query)]

    async def delete_dead_nodes(self, node_ids: list[str], before: float) -> list[str]:
        """Delete those of `node_ids` still dead since before `before` (a node that
        registered again meanwhile stays), in one transaction; the ids deleted."""
        if not node_ids:
            return []
        where = sa.and_(nodes.c.id.in_(node_ids), nodes.c.state.in_(_DEAD),
                        nodes.c.state_since < before)
        async with self._write() as conn:
            gone = list((await conn.execute(sa.select(nodes.c.id).where(where))).scalars())
            if gone:
                await conn.execute(nodes.delete().where(nodes.c.id.in_(gone)))
        return gone

    async def live_members(self) -> set[str]:
        """The node ids that jobs not yet ended count as members."""
        query = sa.select(jobs.c.node_ids).where(
            jobs.c.state.not_in([s.value for s in JobState if s.terminal]))
        async with self.engine.connect() as conn:
            return {n for row in await conn.execute(query) for n in json.loads(row[0])}

    # events ---------------------------------------------------------------------------
    async def append_event(self, job_id: str, kind: str, generation: int, message: str,
                           payload: Payload) -> EventRecord:
        values = dict(job_id=job_id, time=time.time(), kind=kind, generation=generation,
                      message=message, data_json=encode_event(kind, payload),
                      epoch=self.epoch)
        async with self._write() as conn:
            result = await conn.execute(events.insert().values(**values))
        return EventRecord(seq=result.inserted_primary_key[0], **values)

    async def events_after(self, job_id: str, seq: int = 0) -> list[EventRecord]:
        query = (events.select().where(events.c.job_id == job_id, events.c.seq > seq)
                 .order_by(events.c.seq))
        async with self.engine.connect() as conn:
            return [EventRecord(**r._mapping) for r in await conn.execute(query)]

    # logs -----------------------------------------------------------------------------
    async def append_logs(self, batches: list[tuple[list[LogRecord], str, int]],
                          ) -> list[list[LogRecord]]:
        """Store the lines of several agent messages (lines, node id, the message's sequence
        number) and mark each node's newest message applied, in one transaction: a replayed
        message is then either wholly new or wholly known."""
        lines = [line for batch, _, _ in batches for line in batch]
        rows = [{k: v for k, v in dataclasses.asdict(line).items() if k != "id"} for line in lines]
        applied: dict[str, int] = {}
        for _, node_id, seq in batches:
            applied[node_id] = max(seq, applied.get(node_id, 0))
        insert = logs.insert().returning(logs.c.id, sort_by_parameter_order=True)
        update = nodes.update().where(nodes.c.id == sa.bindparam("node_id"))
        async with self._write() as conn:
            ids = iter((await conn.execute(insert, rows)).scalars().all() if rows else [])
            await conn.execute(update, [{"node_id": n, "applied_seq": seq}
                                        for n, seq in applied.items()])
        return [[dataclasses.replace(line, id=next(ids)) for line in batch]
                for batch, _, _ in batches]

    async def log_bytes(self, job_id: str) -> int:
        """How much log text (UTF-8 bytes) the job has stored."""
        size = sa.func.coalesce(sa.func.sum(_utf8_bytes(self.engine, logs.c.text)), 0)
        async with self.engine.connect() as conn:
            return (await conn.execute(sa.select(size).where(logs.c.job_id == job_id))).scalar()

    async def read_logs(self, job_id: str, after_id: int = 0, node_id: str = "",
                        rank: int | None = None, tail: int = 0) -> list[LogRecord]:
        query = logs.select().where(logs.c.job_id == job_id, logs.c.id > after_id)
        if node_id:
            query = query.where(logs.c.node_id == node_id)
        if rank is not None:
            query = query.where(logs.c.rank == rank)
        if tail > 0:
            query = query.order_by(logs.c.id.desc()).limit(tail)
        else:
            query = query.order_by(logs.c.id)
        async with self.engine.connect() as conn:
            records = [LogRecord(**r._mapping) for r in await conn.execute(query)]
        return sorted(records, key=lambda r: r.id) if tail > 0 else records
