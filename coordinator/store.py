"""Durable state: jobs, nodes, an append-only event log and worker logs, in SQLite (WAL).

SQLAlchemy Core over aiosqlite so a PostgreSQL backend stays open. Every call takes its own
connection from the pool (never one shared across coroutines). Writes that decide ownership
(job state) are compare-and-set on a version column.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from coordinator.errors import Conflict, NotFound
from coordinator.states import JobState, NodeState

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

    def to_row(self) -> dict[str, Any]:
        row = dataclasses.asdict(self)
        row["state"] = str(self.state)
        row["node_ids"] = json.dumps(row["node_ids"])
        row["failure_json"] = json.dumps(row.pop("failure"))
        return row

    @classmethod
    def from_row(cls, row: Any) -> JobRecord:
        data = dict(row._mapping)
        data["state"] = JobState(data["state"])
        data["node_ids"] = json.loads(data["node_ids"])
        data["failure"] = json.loads(data.pop("failure_json"))
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


def _sqlite_pragmas(dbapi_conn, _record) -> None:
    cursor = dbapi_conn.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.close()


class Store:
    def __init__(self, engine: AsyncEngine):
        self.engine = engine

    @classmethod
    async def open(cls, path: Path) -> Store:
        engine = create_async_engine(f"sqlite+aiosqlite:///{path}")
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        async with engine.begin() as conn:
            await conn.run_sync(metadata.create_all)
        return cls(engine)

    async def close(self) -> None:
        await self.engine.dispose()

    # jobs -----------------------------------------------------------------------------
    async def insert_job(self, job: JobRecord) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(jobs.insert().values(**job.to_row()))

    async def save_job(self, job: JobRecord) -> None:
        """Compare-and-set on `version`: a stale writer gets Conflict, never a lost update."""
        expected = job.version
        job.version += 1
        job.updated_at = time.time()
        async with self.engine.begin() as conn:
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

    # nodes ----------------------------------------------------------------------------
    async def save_node(self, node: NodeRecord) -> None:
        row = node.to_row()
        async with self.engine.begin() as conn:
            updated = await conn.execute(nodes.update().where(nodes.c.id == node.id).values(**row))
            if updated.rowcount == 0:
                await conn.execute(nodes.insert().values(**row))

    async def save_nodes(self, records: list[NodeRecord]) -> None:
        """Insert or update many node records in one transaction."""
        rows = {node.id: node.to_row() for node in records}
        if not rows:
            return
        async with self.engine.begin() as conn:
            known = set((await conn.execute(sa.select(nodes.c.id).where(
                nodes.c.id.in_(list(rows))))).scalars())
            if known:
                update = nodes.update().where(nodes.c.id == sa.bindparam("node_id"))
                await conn.execute(update, [{**row, "node_id": node_id}
                                            for node_id, row in rows.items() if node_id in known])
            if fresh := [row for node_id, row in rows.items() if node_id not in known]:
                await conn.execute(nodes.insert(), fresh)

    async def list_nodes(self, job_id: str | None = None,
                         include_gone: bool = False) -> list[NodeRecord]:
        query = nodes.select().order_by(nodes.c.created_at)
        if job_id:
            query = query.where(nodes.c.job_id == job_id)
        if not include_gone:
            query = query.where(nodes.c.state.not_in([NodeState.GONE.value]))
        async with self.engine.connect() as conn:
            return [NodeRecord.from_row(r) for r in await conn.execute(query)]

    # events ---------------------------------------------------------------------------
    async def append_event(self, job_id: str, kind: str, generation: int, message: str,
                           data: dict[str, Any] | None = None) -> EventRecord:
        values = dict(job_id=job_id, time=time.time(), kind=kind, generation=generation,
                      message=message, data_json=json.dumps(data or {}, default=str))
        async with self.engine.begin() as conn:
            result = await conn.execute(events.insert().values(**values))
        return EventRecord(seq=result.inserted_primary_key[0], **values)

    async def events_after(self, job_id: str, seq: int = 0) -> list[EventRecord]:
        query = (events.select().where(events.c.job_id == job_id, events.c.seq > seq)
                 .order_by(events.c.seq))
        async with self.engine.connect() as conn:
            return [EventRecord(**r._mapping) for r in await conn.execute(query)]

    # logs -----------------------------------------------------------------------------
    async def append_logs(self, lines: list[LogRecord], node_id: str,
                          applied_seq: int) -> list[LogRecord]:
        """Store the lines and mark the agent message that carried them applied, in one
        transaction: a replayed message is then either wholly new or wholly known."""
        rows = [{k: v for k, v in dataclasses.asdict(line).items() if k != "id"} for line in lines]
        insert = logs.insert().returning(logs.c.id, sort_by_parameter_order=True)
        async with self.engine.begin() as conn:
            ids = (await conn.execute(insert, rows)).scalars().all() if rows else []
            await conn.execute(nodes.update().where(nodes.c.id == node_id)
                               .values(applied_seq=applied_seq))
        return [dataclasses.replace(line, id=i) for line, i in zip(lines, ids, strict=True)]

    async def log_bytes(self, job_id: str) -> int:
        """How much log text (UTF-8 bytes) the job has stored."""
        size = sa.func.coalesce(sa.func.sum(sa.func.length(sa.cast(logs.c.text,
                                                                   sa.LargeBinary))), 0)
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
