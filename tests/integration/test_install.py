"""What an install without the optional packages gets: every mode a job file offers either
works or says why it cannot, never silently."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from contract.states import JobState
from tests.integration.harness import ROOT, start_coordd


def hiding(tmp_path, *modules: str) -> dict[str, str]:
    """An environment whose Python processes cannot import `modules`, as if not installed."""
    site = tmp_path / "hide"
    site.mkdir()
    (site / "sitecustomize.py").write_text(
        "import sys\n" + "".join(f"sys.modules[{m!r}] = None\n" for m in modules))
    return {"PYTHONPATH": os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")]))}


@pytest.mark.timeout(90)
def test_auto_mode_without_torchft_says_it_runs_in_restart_mode_and_why(tmp_path):
    coordd = start_coordd(tmp_path / "state", env=hiding(tmp_path, "torchft"))
    try:
        job = tmp_path / "job.toml"
        job.write_text(textwrap.dedent("""
            name = "auto"
            run = "python -c 'print(1)'"
            [nodes]
            count = 1
            [fault_tolerance]
            mode = "auto"
        """))
        with coordd.client() as client:
            record = client.submit(job)
            assert client.wait(record.id, timeout=60).state == JobState.SUCCEEDED
            said = [e for e in client.watch(record.id, follow=False) if e.kind == "mode.restart"]
        assert len(said) == 1 and said[0].generation == 1
        reason = said[0].data["reason"]
        assert "torchft is not installed where coordd runs" in reason
        assert "pip install 'coord[elastic]'" in reason
        status = coordd.cli("status", record.id)
        assert status.returncode == 0, status.stderr
        assert "mode:     restart, not in-process: torchft is not installed" in status.stdout
    finally:
        coordd.stop()


@pytest.mark.timeout(60)
def test_the_elastic_library_without_numpy_refuses_to_start_and_says_what_to_install(tmp_path):
    # Without numpy, restoring a peer's snapshot failed in every generation after a node loss.
    result = subprocess.run([sys.executable, "-c", "import trainer.elastic"], cwd=ROOT,
                            env={**os.environ, **hiding(tmp_path, "numpy")},
                            capture_output=True, text=True, timeout=50)
    assert result.returncode != 0
    assert "trainer.elastic needs numpy" in result.stderr
    assert "pip install 'coord[elastic]'" in result.stderr


@pytest.mark.timeout(90)
def test_a_job_whose_setup_fails_shows_the_setup_output_in_status(tmp_path):
    # What a node without the trainer's packages prints: the reason must reach `coord status`.
    coordd = start_coordd(tmp_path / "state")
    try:
        job = tmp_path / "job.toml"
        job.write_text(textwrap.dedent("""
            name = "nosetup"
            setup = "echo 'error: No module named sklearn'; exit 1"
            run = "true"
            [nodes]
            count = 1
        """))
        result = coordd.cli("submit", str(job), timeout=80)
        assert result.returncode == 1, result.stdout + result.stderr
        status = coordd.cli("status", "nosetup")
        assert "last lines of the first failed worker" in status.stdout, status.stdout
        assert "error: No module named sklearn" in status.stdout.split("last lines")[1]
    finally:
        coordd.stop()
