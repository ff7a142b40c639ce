"""Schema migrations (Alembic), one path for SQLite and PostgreSQL, run by coordd at start.

The schema lives in versions/ only: a change to a table in store.py comes with a new file
there (written by hand; tests/unit/test_migrations.py fails while the two disagree).
"""

from __future__ import annotations

import asyncio
import weakref
from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from sqlalchemy.ext.asyncio import AsyncEngine

HERE = Path(__file__).resolve().parent
# The revision whose schema coordd built with metadata.create_all before migrations existed:
# a database with those tables and no alembic_version is adopted at it, then upgraded.
BASELINE = "0001"
# pg_advisory_xact_lock key, so that coordd processes starting together upgrade one at a time.
UPGRADE_LOCK = 0x636F6F7264  # "coord"
_in_process: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def config(connection: sa.Connection) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(HERE))
    cfg.attributes["connection"] = connection
    return cfg


async def upgrade(engine: AsyncEngine) -> None:
    """Bring the database to the newest schema, in one transaction that holds the lock."""
    # Alembic keeps the running migration in module globals: one upgrade per process at a time.
    lock = _in_process.setdefault(asyncio.get_running_loop(), asyncio.Lock())
    async with lock, engine.begin() as conn:
        await conn.run_sync(_upgrade)


def _upgrade(connection: sa.Connection) -> None:
    if connection.dialect.name == "postgresql":
        connection.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": UPGRADE_LOCK})
    cfg = config(connection)
    tables = sa.inspect(connection).get_table_names()
    if "jobs" in tables and "alembic_version" not in tables:
        command.stamp(cfg, BASELINE)
    command.upgrade(cfg, "head")


def head() -> str:
    from alembic.script import ScriptDirectory
    cfg = Config()
    cfg.set_main_option("script_location", str(HERE))
    return ScriptDirectory.from_config(cfg).get_current_head()
