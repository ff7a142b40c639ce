"""A job's output shows the job, not the framework: through an in-process node loss no torchft,
torch or HTTP machinery lines reach `coord logs`, the handled loss is one line per survivor,
nothing is said of nodes after the job ended, and `--timestamps` stamps every line."""

from __future__ import annotations

import collections
import re
import shutil
import signal
import textwrap

import pytest

from contract.states import JobState
from tests.integration.harness import ROOT, start_coordd, wait_for
from trainer.elastic import committed_history

pytest.importorskip("torchft")

# torchft's and torch's machinery, and gloo's error (with its traceback) for a handled loss
NOISE = re.compile(r"flight recorder|GET /checkpoint|UserWarning|got exception|pair\.cc|GLHF")
STAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z ")


@pytest.fixture
def coordd(tmp_path):
    server = start_coordd(tmp_path / "state", "--heartbeat-timeout", "3",
                          env={"COORDD_STOP_GRACE_S": "3"})
    yield server
    server.stop()


def reached(coordd, job_id: str, step: int) -> bool:
    lineage = committed_history(coordd.state_dir / "checkpoints" / job_id).lineage
    return bool(lineage) and lineage[-1].step >= step


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_an_inprocess_node_loss_leaves_only_the_jobs_lines_and_one_line_for_the_loss(
        coordd, client, tmp_path):
    work = tmp_path / "job"
    shutil.copytree(ROOT / "examples" / "elastic", work)
    (work / "job.toml").write_text(textwrap.dedent("""
        name = "quiet"
        run = "python train.py --steps 300 --ckpt-every 20 --step-sleep 0.03"
        [nodes]
        count = 3
        min = 2
    """))
    job = client.submit(work / "job.toml")
    wait_for(lambda: reached(coordd, job.id, 40), 120, what="step 40")
    first = list(client.get(job.id).node_ids)
    victim = first[1]
    coordd.kill_node(victim, signal.SIGKILL)
    final = client.wait(job.id, timeout=150)
    assert final.state == JobState.SUCCEEDED, final.reason

    lines = list(client.logs(job.id))
    assert [l.text for l in lines if NOISE.search(l.text)] == []
    said = collections.Counter(l.node_id for l in lines if "peer replica" in l.text)
    assert said == {node: 1 for node in first if node != victim}, said

    assert [e.message for e in _after_end(client, job.id) if e.kind == "node.leaving"] == []

    stamped = coordd.cli("logs", job.id, "--timestamps").stdout.splitlines()
    assert stamped and all(STAMP.match(line) for line in stamped), stamped[:3]


def _after_end(client, job_id: str) -> list:
    events = list(client.watch(job_id, follow=False))
    end = max(i for i, e in enumerate(events) if e.kind == "state" and "SUCCEEDED" in e.message)
    return events[end + 1:]
