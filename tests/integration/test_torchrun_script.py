"""A torchrun user's script brought as it is: it reads torchrun's environment, its workers
share this machine's cores, and through a node loss every rank resumes from its own snapshot
file at the same epoch."""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import signal
import textwrap
from collections import defaultdict
from pathlib import Path

import pytest
import torch

from contract.states import JobState
from tests.integration.harness import ROOT, wait_for

EPOCHS = 80
RESUMING = re.compile(r"\[RANK(\d+)\] resuming at epoch (\d+)")


def submit(client, tmp_path: Path):
    work = tmp_path / "job"
    work.mkdir()
    shutil.copy(ROOT / "tests" / "integration" / "jobs" / "torchrun_ddp.py", work)
    (work / "job.toml").write_text(textwrap.dedent(f"""
        name = "torchrun-ddp"
        run = "python torchrun_ddp.py {EPOCHS} snapshot.pt"
        [nodes]
        count = 3
        min = 2
        [fault_tolerance]
        mode = "restart"
    """))
    return client.submit(work / "job.toml")


def snapshot_epoch(path: Path) -> int:
    return torch.load(path)["EPOCHS_RUN"] if path.exists() else 0


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_a_torchrun_script_resumes_every_rank_at_one_epoch_after_a_node_sigkill(
        coordd, client):
    record = submit(client, coordd.state_dir.parent)
    snapshot = coordd.state_dir / "checkpoints" / record.id / "snapshot.pt"
    wait_for(lambda: snapshot_epoch(snapshot) >= 10, 90, what="epoch 10")
    coordd.kill_node(random.choice(list(client.get(record.id).node_ids)), signal.SIGKILL)
    final = client.wait(record.id, timeout=120)
    assert final.state == JobState.SUCCEEDED, final.reason

    resumed: dict[int, set[int]] = defaultdict(set)
    environments = []
    for line in client.logs(record.id):
        if match := RESUMING.search(line.text):
            resumed[line.generation].add(int(match[2]))
        elif line.text.startswith("ENV "):
            environments.append((line.generation, json.loads(line.text[4:])))
    first, *later = sorted(resumed)
    assert resumed[first] == {0}
    assert later and all(len(resumed[g]) == 1 for g in later), dict(resumed)
    assert min(resumed[later[0]]) >= 10  # from the shared snapshot, not from the start

    threads = os.environ.get("OMP_NUM_THREADS") or str(max(1, (os.cpu_count() or 1) // 3))
    for generation, env in environments:
        assert env["TORCHELASTIC_RUN_ID"] == record.id
        assert env["TORCHELASTIC_MAX_RESTARTS"] == "0"
        assert env["TORCHELASTIC_RESTART_COUNT"] == "0"  # a lost node is not a restart
        assert env["ROLE_RANK"] == env["RANK"] and env["ROLE_WORLD_SIZE"] == env["WORLD_SIZE"]
        assert env["GROUP_WORLD_SIZE"] == env["WORLD_SIZE"]  # one worker per node
        assert env["COORD_SNAPSHOT_DIR"]
        if generation == first:
            assert env["OMP_NUM_THREADS"] == threads
