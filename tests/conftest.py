from __future__ import annotations

import pytest

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
