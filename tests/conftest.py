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


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    """A failed test that ran coordd shows the end of each coordd log it left in its tmp dir:
    what a flake in CI needs to be understood afterwards."""
    report = yield
    tmp = item.funcargs.get("tmp_path") if hasattr(item, "funcargs") else None
    if report.failed and call.when == "call" and tmp is not None:
        logs = [p for p in tmp.rglob("coordd.log") if "nodes" not in p.relative_to(tmp).parts]
        for log in sorted(logs)[:4]:
            tail = log.read_text(errors="replace").splitlines()[-40:]
            report.sections.append((f"tail of {log.relative_to(tmp)}", "\n".join(tail)))
    return report
