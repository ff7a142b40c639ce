"""The local provider refuses at submit a job whose nodes cannot all run on this machine."""

from __future__ import annotations

import re
import textwrap

import pytest

from coordinator.localcluster import start_coordd


def job_file(tmp_path, count: int):
    path = tmp_path / f"job-{count}.toml"
    path.write_text(textwrap.dedent(f"""
        name = "big"
        run = "true"
        [nodes]
        count = {count}
    """))
    return path


@pytest.mark.timeout(60)
def test_a_job_with_more_nodes_than_fit_is_refused_saying_how_many_fit(tmp_path):
    coordd = start_coordd(tmp_path / "state")
    try:
        refused = coordd.cli("submit", str(job_file(tmp_path, 1000)))
        assert refused.returncode == 2, refused.stdout + refused.stderr
        text = " ".join(refused.stderr.split())
        fit = re.search(r"nodes\.count = 1000: at most (\d+) local node\(s\) fit this machine",
                        text)
        assert fit and 3 <= int(fit[1]) < 1000, text
        assert "local.worker_memory_mb" in text
        accepted = coordd.cli("submit", "--dry-run", str(job_file(tmp_path, 4)))
        assert accepted.returncode == 0, accepted.stdout + accepted.stderr
        with coordd.client() as client:
            assert client.jobs() == []
    finally:
        coordd.stop()


@pytest.mark.timeout(60)
def test_the_memory_a_node_takes_is_a_setting(tmp_path):
    coordd = start_coordd(tmp_path / "state", env={"COORDD_LOCAL__AGENT_MEMORY_MB": "1e9"})
    try:
        refused = coordd.cli("submit", str(job_file(tmp_path, 1)))
        assert refused.returncode == 2
        assert "at most 0 local node(s) fit" in " ".join(refused.stderr.split())
    finally:
        coordd.stop()
