"""The epoch guard on PostgreSQL: once a standby took the lease over, a write of the old
leader is refused and the row keeps what the new leader wrote; a write in flight finishes
before the takeover, never after it."""

from __future__ import annotations

import asyncio
import time

import pytest
import sqlalchemy as sa

from contract import events as ev
from contract.errors import Fenced
from contract.states import JobState
from coordinator.leadership import Leadership
from coordinator.store import JobRecord, Store

LEASE_S = 0.6


async def leading(url: str, me: str) -> tuple[Store, Leadership]:
    store = await Store.open(url)
    leadership = Leadership(store.engine, me, f"{me}:7070", LEASE_S)
    await leadership.campaign()
    store.guard, store.epoch = leadership.guard, leadership.epoch
    return store, leadership


async def test_a_stale_leaders_writes_are_refused_after_a_takeover(pg_url):
    old, old_lead = await leading(pg_url, "a")
    new = None
    try:
        await old.insert_job(JobRecord(id="j-1", name="j", spec_json="{}"))
        stale = await old.get_job("j-1")
        new, new_lead = await leading(pg_url, "b")   # waits for a's lease to run out
        assert (old_lead.epoch, new_lead.epoch) == (1, 2)
        fresh = await new.get_job("j-1")
        fresh.state = JobState.RUNNING
        await new.save_job(fresh)
        stale.state = JobState.CANCELLED
        with pytest.raises(Fenced):
            await old.save_job(stale)
        with pytest.raises(Fenced):
            await old.append_event("j-1", ev.STATE, 0, "from the past", ev.StateChanged())
        assert (await new.get_job("j-1")).state == JobState.RUNNING
        assert [e.epoch for e in await new.events_after("j-1")] == []
        await new.append_event("j-1", ev.STATE, 0, "now", ev.StateChanged())
        assert [e.epoch for e in await new.events_after("j-1")] == [2]
    finally:
        for store in (old, new):
            if store:
                await store.close()


async def test_a_takeover_waits_for_the_old_leaders_write_in_flight(pg_url):
    old, _ = await leading(pg_url, "a")
    new = None
    try:
        async def slow_write() -> float:
            async with old._write() as conn:      # guarded: holds the lease row FOR SHARE
                await conn.exec_driver_sql(f"SELECT pg_sleep({LEASE_S * 3})")
                await conn.exec_driver_sql(
                    "INSERT INTO members VALUES ('w', '', 0, 0)")  # any write
            return time.monotonic()

        writing = asyncio.create_task(slow_write())
        await asyncio.sleep(0.1)
        new, new_lead = await leading(pg_url, "b")
        took_over = time.monotonic()
        assert new_lead.epoch == 2 and took_over >= await writing
    finally:
        for store in (old, new):
            if store:
                await store.close()


async def test_a_leader_stalled_inside_a_write_cannot_hold_the_takeover_back(pg_url):
    """Frozen (SIGSTOP) or cut off mid-transaction: the database ends the transaction after
    a lease of idleness, the standby takes over, the write never lands."""
    old, _ = await leading(pg_url, "a")
    new = None
    try:
        with pytest.raises(sa.exc.DBAPIError):
            async with old._write() as conn:
                taking_over = asyncio.create_task(leading(pg_url, "b"))
                new, new_lead = await taking_over   # while this transaction sits idle
                assert new_lead.epoch == 2
                await conn.exec_driver_sql("INSERT INTO members VALUES ('w', '', 0, 0)")
        async with new.engine.connect() as conn:
            ids = (await conn.exec_driver_sql("SELECT id FROM members")).scalars().all()
        assert "w" not in ids
    finally:
        for store in (old, new):
            if store:
                await store.close()
