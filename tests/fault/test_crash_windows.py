"""coordd SIGKILLed between the steps of a re-formation (decision committed, effect sent,
effect marked done) and started again: the intents it had not marked done are performed
again, idempotently, and the job finishes with no worker missing and no restart charged."""

from __future__ import annotations

import signal

import pytest

from contract.states import JobState
from tests.fault.test_inprocess import assert_no_committed_step_lost, events, submit
from tests.integration.harness import start_coordd, wait_for
from tests.net import free_port

pytest.importorskip("torchft")


@pytest.mark.slow
@pytest.mark.timeout(240)
@pytest.mark.parametrize("point", [
    "reform.node_lost.committed",
    "reform.node_joined.committed",
    "reform.node_joined.launch.sent"])
def test_a_coordd_killed_mid_reformation_finishes_the_job(tmp_path, point):
    listen, state = f"127.0.0.1:{free_port()}", tmp_path / "state"
    flags = ("--heartbeat-timeout", "3")
    coordd = start_coordd(state, *flags, listen=listen,
                          env={"COORDD_STOP_GRACE_S": "3", "COORD_FAULT_POINT": point})
    try:
        with coordd.client() as client:
            record = submit(client, tmp_path, step_sleep=0.1)  # still training after the restart
            wait_for(lambda: len(events(client, record.id, "inprocess.joined")) == 3, 90,
                     what="every replica to train")
            victim = client.get(record.id).node_ids[1]
            coordd.kill_node(victim, signal.SIGKILL)
        assert coordd.process.wait(timeout=90) == -signal.SIGKILL  # the fault point fired
        coordd = start_coordd(state, *flags, listen=listen, env={"COORDD_STOP_GRACE_S": "3"})
        with coordd.client() as client:
            final = client.wait(record.id, timeout=150)
            assert final.state == JobState.SUCCEEDED, final.reason
            assert final.restarts == 0
            [joined] = [e for e in events(client, record.id, "generation.reformed") if e["added"]]
            newcomer = joined["added"][0]
            assert newcomer in final.node_ids
            # It trained from a peer's state. It may not reach the last step: a replica out of
            # phase with its peers when they take it is left waiting for a quorum, and coordd
            # stops it (the job still succeeds, no step lost: checked below).
            assert any(e["node"] == newcomer
                       for e in events(client, record.id, "inprocess.joined"))
            healed = [l.text for l in client.logs(record.id, node=newcomer)
                      if "healed" in l.text and "source=peer" in l.text]
            assert healed, "the newcomer never took a peer's state"
        assert_no_committed_step_lost(coordd, record.id)
    finally:
        coordd.stop()
