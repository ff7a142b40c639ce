"""A job's reconciler that keeps crashing (a bug, injected through a fault point) fails its
job with a reason a person can read, instead of leaving the job hanging."""

from __future__ import annotations

import pytest

from contract.states import JobState
from tests.integration.harness import start_coordd


@pytest.mark.timeout(90)
def test_a_reconciler_that_keeps_crashing_fails_its_job_with_the_error(tmp_path):
    coordd = start_coordd(tmp_path / "state", env={"COORD_FAULT_POINT": "reconciler.turn:raise"})
    (tmp_path / "job.toml").write_text('name = "doomed"\nrun = "true"\n')
    try:
        with coordd.client() as client:
            job = client.submit(tmp_path / "job.toml")
            final = client.wait(job.id, timeout=60)
        assert final.state == JobState.FAILED
        assert "reconciler for this job failed 3 times" in final.reason
        assert "fault injected at reconciler.turn" in final.reason
    finally:
        coordd.stop()
