"""The local provider refuses at submit a job whose nodes cannot all run on this machine, and
takes, with a warning, one that fits the machine but not the memory free at the moment."""

from __future__ import annotations

import re
import textwrap

import pytest

from contract.errors import InvalidSpec
from contract.spec import JobSpec
from coordinator.localcluster import start_coordd
from coordinator.providers.local import Memory, fit_verdict
from coordinator.settings import LocalSettings

# One node of nproc_per_node = 1 takes 100 MB here.
SMALL = LocalSettings(agent_memory_mb=20, worker_memory_mb=80)


def spec(count: int) -> JobSpec:
    return JobSpec(name="j", run="true", nodes={"count": count})


def test_nodes_that_fit_the_machine_but_not_its_free_memory_are_taken_with_a_warning():
    busy = Memory(total_mb=20_000, available_mb=2_000)  # 18000 MB usable: 180 nodes
    warning = fit_verdict(spec(50), SMALL, "job.toml", busy)
    assert "nodes.count = 50: only 20 local node(s) fit the memory available now" in warning
    assert fit_verdict(spec(20), SMALL, "job.toml", busy) == ""


def test_nodes_beyond_the_machine_less_its_reserve_are_refused_saying_how_many_fit():
    idle = Memory(total_mb=20_000, available_mb=19_800)
    assert fit_verdict(spec(180), SMALL, "job.toml", idle) == ""
    with pytest.raises(InvalidSpec) as refused:
        fit_verdict(spec(181), SMALL, "job.toml", idle)
    assert "job.toml: nodes.count = 181: at most 180 local node(s) fit this machine" in str(
        refused.value)
    assert "it has 20000 MB, 2000 MB of it kept for the system" in str(refused.value)


def test_the_reserve_is_a_share_of_the_machine_with_a_floor():
    assert Memory(total_mb=4_096, available_mb=0).reserved_mb == 1024
    assert Memory(total_mb=65_536, available_mb=0).reserved_mb == pytest.approx(6553.6)
    assert Memory(total_mb=512, available_mb=0).usable_mb == 0


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
