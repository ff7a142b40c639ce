"""The reads the dashboard needs beyond the store's own: a page of jobs, the events of many
jobs at once, the progress lines of a job, and nodes counted by state. Over the store's
tables and engine, so every backend the store gets serves these too."""

from __future__ import annotations

import dataclasses

import sqlalchemy as sa

from contract.states import JobState
from coordinator.store import EventRecord, JobRecord, NodeRecord, Store
from coordinator.store import events as events_t
from coordinator.store import jobs as jobs_t
from coordinator.store import logs as logs_t
from coordinator.store import nodes as nodes_t

PROGRESS_LIKE = "step=%"


@dataclasses.dataclass(frozen=True)
class Page:
    rows: list
    total: int
    page: int
    per_page: int


async def jobs_page(store: Store, state: str, page: int, per_page: int) -> Page:
    """Newest first; `state` one JobState name, "active" (not ended) or "" (all)."""
    where = []
    if state == "active":
        where.append(jobs_t.c.state.not_in([s.value for s in JobState if s.terminal]))
    elif state:
        where.append(jobs_t.c.state == state)
    query = (jobs_t.select().where(*where).order_by(jobs_t.c.created_at.desc())
             .limit(per_page).offset((page - 1) * per_page))
    count = sa.select(sa.func.count()).select_from(jobs_t).where(*where)
    async with store.engine.connect() as conn:
        rows = [JobRecord.from_row(r) for r in await conn.execute(query)]
        total = (await conn.execute(count)).scalar() or 0
    return Page(rows, total, page, per_page)


async def events_of(store: Store, job_ids: list[str]) -> dict[str, list[EventRecord]]:
    """Every event of each job, in one query, oldest first."""
    result: dict[str, list[EventRecord]] = {job_id: [] for job_id in job_ids}
    if not job_ids:
        return result
    query = events_t.select().where(events_t.c.job_id.in_(job_ids)).order_by(events_t.c.seq)
    async with store.engine.connect() as conn:
        for row in await conn.execute(query):
            result[row.job_id].append(EventRecord(**row._mapping))
    return result


async def progress_of(store: Store, job_ids: list[str], limit: int
                      ) -> dict[str, list[tuple[float, str]]]:
    """(time, text) of the newest `limit` lines of each job that look like progress
    (`step=N ...`), oldest first: one query per job that stops at `limit`, so a job with a
    huge log costs no more."""
    result = {}
    async with store.engine.connect() as conn:
        for job_id in job_ids:
            query = (sa.select(logs_t.c.time, logs_t.c.text)
                     .where(logs_t.c.job_id == job_id, logs_t.c.text.like(PROGRESS_LIKE))
                     .order_by(logs_t.c.id.desc()).limit(limit))
            result[job_id] = [(row[0], row[1]) for row in await conn.execute(query)][::-1]
    return result


async def nodes_page(store: Store, state: str, page: int, per_page: int
                     ) -> tuple[Page, dict[str, int]]:
    """A page of nodes (newest first), and how many nodes are in each state."""
    where = [nodes_t.c.state == state] if state else []
    query = (nodes_t.select().where(*where).order_by(nodes_t.c.created_at.desc())
             .limit(per_page).offset((page - 1) * per_page))
    counts = sa.select(nodes_t.c.state, sa.func.count()).group_by(nodes_t.c.state)
    async with store.engine.connect() as conn:
        rows = [NodeRecord.from_row(r) for r in await conn.execute(query)]
        by_state = {row[0]: row[1] for row in await conn.execute(counts)}
    total = by_state.get(state, 0) if state else sum(by_state.values())
    return Page(rows, total, page, per_page), by_state
