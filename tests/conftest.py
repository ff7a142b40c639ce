from __future__ import annotations

import pytest

from tests import pg
from tests.integration.harness import Coordd, start_coordd


@pytest.fixture
def coordd(request, tmp_path) -> Coordd:
    """A real coordd on a free loopback port; stopped (and its nodes with it) afterwards.
    On SQLite, or on PostgreSQL where a test asks with
    `@pytest.mark.parametrize("coordd", ["sqlite", "postgresql"], indirect=True)`."""
    env = {}
    if getattr(request, "param", "sqlite") == "postgresql":
        env["COORDD_DATABASE_URL"] = request.getfixturevalue("pg_url")
    server = start_coordd(tmp_path / "state", "--heartbeat-timeout", "3", env=env)
    yield server
    server.stop()


@pytest.fixture
def client(coordd):
    with coordd.client() as c:
        yield c


@pytest.fixture(scope="session")
def postgres():
    """One real PostgreSQL 15 for the session (tests/pg.py); skipped where it is not installed."""
    if pg.bin_dir() is None:
        pytest.skip(pg.MISSING)
    server = pg.start()
    yield server
    server.stop()


@pytest.fixture
def pg_url(postgres) -> str:
    """A fresh database on the session's PostgreSQL: its SQLAlchemy URL."""
    return postgres.new_database()


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request, tmp_path) -> str:
    """Where a Store keeps its state, once per backend: a SQLite file, a PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'coord.db'}"
    return request.getfixturevalue("pg_url")
