"""A healthy in-process start reports nothing to recover from: its replicas start at different
moments, and the quorum that grows while they gather is the start, not a re-formation; the
state the late ones take from a peer is the start's one state, not a heal."""

from __future__ import annotations

import pytest

from contract.states import JobState
from tests.fault.test_inprocess import assert_no_committed_step_lost, events, submit
from tests.integration.harness import start_coordd

pytest.importorskip("torchft")


@pytest.mark.timeout(180)
def test_a_healthy_start_reports_no_reformation_and_no_heal(tmp_path):
    server = start_coordd(tmp_path / "state")
    try:
        with server.client() as client:
            record = submit(client, tmp_path, step_sleep=0.01)
            final = client.wait(record.id, timeout=150)
            assert final.state == JobState.SUCCEEDED, final.reason
            lines = [line.text for line in client.logs(record.id)]
            assert not [t for t in lines if " reformed " in t or " healed " in t], lines
            done = [t for t in lines if t.startswith("DONE")]
            assert len(done) == 3, done
            assert all("healed_from_peer=False" in t and "reformations=0" in t for t in done)
            assert not events(client, record.id, "generation.reformed")
        assert_no_committed_step_lost(server, record.id)
    finally:
        server.stop()
