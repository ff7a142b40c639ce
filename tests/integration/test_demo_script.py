"""scripts/demo.sh's own steps (the install is stubbed: the test environment has everything):
it waits for the coordd it started, never touches another coordd's files, and when its
coordd dies it shows why."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.integration.harness import ROOT, start_coordd


@pytest.fixture
def demo(tmp_path) -> Path:
    """A copy of the demo script whose install step does nothing, beside this venv."""
    repo = tmp_path / "repo"
    (repo / "scripts").mkdir(parents=True)
    shutil.copy(ROOT / "scripts" / "demo.sh", repo / "scripts" / "demo.sh")
    (repo / "scripts" / "setup.sh").write_text("exit 0\n")
    (repo / ".venv").symlink_to(ROOT / ".venv")
    return repo / "scripts" / "demo.sh"


def run_demo(demo: Path, state: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(demo), *args], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "COORDD_STATE_DIR": str(state)})


@pytest.mark.timeout(150)
def test_the_demo_runs_a_job_on_the_coordd_it_started(demo, tmp_path):
    job = tmp_path / "job.toml"
    job.write_text('name = "hello"\nrun = "echo hello"\n[nodes]\ncount = 1\n')
    ran = run_demo(demo, tmp_path / "state", str(job))
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert "coordd is listening on 127.0.0.1:" in ran.stdout and "SUCCEEDED" in ran.stdout


@pytest.mark.timeout(150)
def test_the_demo_leaves_a_running_coordd_alone_and_shows_why_its_own_exited(demo, tmp_path):
    state = tmp_path / "state"
    running = start_coordd(state)
    try:
        ran = run_demo(demo, state)
        assert ran.returncode == 1
        assert "coordd exited before it listened" in ran.stderr
        assert f"another coordd (pid {running.process.pid}" in ran.stderr
        assert (state / "coordd.addr").read_text().strip() == running.address
    finally:
        running.stop()
