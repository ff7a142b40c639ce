"""The schema comes from the migrations on both backends, matches what the store's code
expects, adopts a SQLite file made before migrations existed, and two coordd upgrading one
PostgreSQL at once do it once."""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
import sys
import time

import asyncpg
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy.ext.asyncio import create_async_engine

from coordinator import migrations
from coordinator.store import JobRecord, Store, metadata


def _differences(connection: sa.Connection) -> list:
    return compare_metadata(MigrationContext.configure(connection), metadata)


async def test_the_migrated_schema_is_the_one_the_store_uses(store_url):
    store = await Store.open(store_url)
    try:
        async with store.engine.connect() as conn:
            assert await conn.run_sync(_differences) == []
            version = (await conn.execute(sa.text("SELECT version_num FROM alembic_version")))
            assert version.scalar() == migrations.head()
    finally:
        await store.close()


async def test_a_sqlite_file_from_before_migrations_is_adopted_with_its_jobs(tmp_path):
    path = tmp_path / "coord.db"
    engine = create_async_engine(f"sqlite+aiosqlite:///{path}")
    async with engine.begin() as conn:   # the tables coordd's create_all made until now
        await conn.run_sync(lambda c: command.upgrade(migrations.config(c), migrations.BASELINE))
        await conn.execute(sa.text("DROP TABLE alembic_version"))
    await engine.dispose()
    store = await Store.open(path)
    await store.insert_job(JobRecord(id="j-1", name="old", spec_json="{}"))
    await store.close()
    store = await Store.open(path)   # and a second start finds it at head
    try:
        assert (await store.get_job("old")).id == "j-1"
    finally:
        await store.close()
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT version_num FROM alembic_version").fetchall() == [
            (migrations.head(),)]


OPEN = "import asyncio, sys; from coordinator.store import Store; " \
       "asyncio.run(Store.open(sys.argv[1]))"
WAITING = "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"


async def test_coordd_processes_starting_together_upgrade_once(pg_url, postgres):
    """Three coordd processes held at the upgrade lock, then let go at the same instant."""
    holder = await asyncpg.connect(pg_url.replace("+asyncpg", ""))
    await holder.execute("SELECT pg_advisory_lock($1)", migrations.UPGRADE_LOCK)
    starts = [await asyncio.create_subprocess_exec(sys.executable, "-c", OPEN, pg_url,
                                                   stderr=subprocess.PIPE) for _ in range(3)]
    deadline = time.monotonic() + 60
    while await holder.fetchval(WAITING) < 3:
        assert time.monotonic() < deadline, "the three starts never waited for the lock"
        await asyncio.sleep(0.05)
    await holder.execute("SELECT pg_advisory_unlock($1)", migrations.UPGRADE_LOCK)
    await holder.close()
    outcomes = [(await p.wait(), (await p.stderr.read())[-800:]) for p in starts]
    assert outcomes == [(0, b"")] * 3
    database = pg_url.rpartition("/")[2]
    assert postgres.psql("SELECT version_num FROM alembic_version", database) == \
        migrations.head()
