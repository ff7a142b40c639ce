"""A spot interruption notice mid-training: graceful drain, zero committed steps lost, and the
replacement asked for when the notice arrives, not when the node dies."""

from __future__ import annotations

import json

import pytest

from contract.states import JobState
from coordinator.providers.imds import MetadataStandIn
from tests.fault.test_machine_loss import (STEPS, ckpt_dir, coordd, reached,  # noqa: F401
                                           submit_training)
from tests.integration.harness import wait_for
from trainer.elastic import committed_history


@pytest.mark.timeout(240)
def test_spot_notice_drains_without_losing_a_step(coordd, client, tmp_path):  # noqa: F811
    record = submit_training(client, tmp_path)
    wait_for(lambda: reached(coordd, record.id, 40), 90, what="step 40")
    doomed = client.get(record.id).node_ids[0]  # rank 0's node, the master
    result = coordd.cli("debug", "interrupt", doomed)
    assert result.returncode == 0, result.stderr
    final = client.wait(record.id, timeout=180)
    assert final.state == JobState.SUCCEEDED, final.reason
    assert doomed not in final.node_ids
    events = list(client.watch(record.id, follow=False))
    kinds = [e.kind for e in events]
    notice = kinds.index("node.leaving")
    assert "spot interruption notice" in events[notice].message
    requested = kinds.index("nodes.requested", notice)
    started = [i for i, e in enumerate(events) if e.kind == "generation.started"]
    assert events[started[1]].data["cause"] == "node_leaving"
    assert requested < started[1]  # the replacement was asked for before the group re-formed
    history = committed_history(ckpt_dir(coordd, record.id))
    assert history.steps == list(range(1, STEPS + 1))
    assert history.lost == [], [r.step for r in history.lost]


@pytest.mark.timeout(30)
async def test_the_metadata_stand_in_speaks_imdsv2():
    import urllib.error
    import urllib.request

    imds = await MetadataStandIn().start()

    def get(path: str, token: str | None) -> tuple[int, str]:
        headers = {"X-aws-ec2-metadata-token": token} if token else {}
        try:
            with urllib.request.urlopen(urllib.request.Request(imds.endpoint + path,
                                                               headers=headers)) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, ""

    import asyncio
    put = urllib.request.Request(imds.endpoint + "/latest/api/token", method="PUT",
                                 headers={"X-aws-ec2-metadata-token-ttl-seconds": "60"})
    token = await asyncio.to_thread(lambda: urllib.request.urlopen(put).read().decode())
    action = "/latest/meta-data/spot/instance-action"
    assert (await asyncio.to_thread(get, action, None))[0] == 401
    assert (await asyncio.to_thread(get, action, token))[0] == 404
    imds.announce("terminate", in_s=120)
    status, body = await asyncio.to_thread(get, action, token)
    assert status == 200 and json.loads(body)["action"] == "terminate"
    await imds.close()
