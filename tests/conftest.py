from __future__ import annotations

import pytest

from tests import pg
from tests.integration.harness import Coordd, start_coordd


@pytest.fixture
def coordd(tmp_path) -> Coordd:
    """A real coordd on a free loopback port; stopped (and its nodes with it) afterwards."""
    server = start_coordd(tmp_path / "state", "--heartbeat-timeout", "3")
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
