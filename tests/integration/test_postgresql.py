"""coordd on PostgreSQL: the jobs live in the database, not on the machine, so a coordd with
a different state directory (another host) finds them; a bad database_url is named."""

from __future__ import annotations

import os
import subprocess

import pytest

from contract.spec import JobSpec
from contract.states import JobState
from coordinator.localcluster import BIN
from tests.integration.harness import start_coordd


@pytest.mark.timeout(120)
def test_another_coordd_state_dir_finds_the_jobs_in_postgresql(tmp_path, pg_url, postgres):
    env = {"COORDD_DATABASE_URL": pg_url}
    first = start_coordd(tmp_path / "host-a", env=env)
    try:
        with first.client() as client:
            job = client.submit(JobSpec(name="short", run="true"), workdir=tmp_path)
            assert client.wait(job.id, timeout=60).state == JobState.SUCCEEDED
    finally:
        first.stop()
    assert not (tmp_path / "host-a" / "coord.db").exists()
    database = pg_url.rpartition("/")[2]
    assert postgres.psql(f"SELECT state FROM jobs WHERE id = '{job.id}'", database) == \
        "SUCCEEDED"
    second = start_coordd(tmp_path / "host-b", env=env)
    try:
        with second.client() as client:
            assert client.get("short").state == JobState.SUCCEEDED
    finally:
        second.stop()


def test_a_database_url_of_an_unknown_kind_is_refused_by_name(tmp_path):
    result = subprocess.run(
        [str(BIN / "coordd"), "serve", "--state-dir", str(tmp_path)], capture_output=True,
        text=True, timeout=60, env={**os.environ, "COORDD_DATABASE_URL": "mysql://db/coord"})
    assert result.returncode == 2
    assert "database_url" in result.stderr and "'mysql'" in result.stderr
