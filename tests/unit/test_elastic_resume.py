"""Real worker processes (examples/elastic/train.py, gloo on loopback): resume at another world
size, agreed stop on SIGTERM, loss without notice, and a fenced-off generation."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from tests.net import free_port
from trainer.elastic import CheckpointStore, committed_history

REPO = Path(__file__).resolve().parents[2]
TRAIN = REPO / "examples" / "elastic" / "train.py"


@dataclass
class Group:
    """One generation of workers."""

    procs: list[subprocess.Popen[bytes]]
    logs: list[Path]

    def wait(self, timeout: float = 60.0) -> list[int]:
        deadline = time.monotonic() + timeout
        try:
            return [p.wait(timeout=max(0.1, deadline - time.monotonic())) for p in self.procs]
        finally:
            self.kill()

    def kill(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()

    def output(self, rank: int) -> str:
        return self.logs[rank].read_text()


def launch(ckpt: Path, world: int, generation: int, *args: str) -> Group:
    """Start `world` workers the way coord's agent does (environment only)."""
    port = free_port()
    procs, logs = [], []
    for rank in range(world):
        env = {**os.environ, "RANK": str(rank), "WORLD_SIZE": str(world),
               "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "1", "GROUP_RANK": str(rank),
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
               "COORD_JOB_ID": "test", "COORD_GENERATION": str(generation),
               "COORD_CHECKPOINT_DIR": str(ckpt), "COORD_NODE_ID": f"node-{rank}",
               "PYTHONPATH": str(REPO), "PYTHONWARNINGS": "ignore"}
        log = ckpt.parent / f"gen{generation}-rank{rank}.log"
        with log.open("wb") as out:
            procs.append(subprocess.Popen([sys.executable, str(TRAIN), *args], env=env,
                                          stdout=out, stderr=subprocess.STDOUT))
        logs.append(log)
    return Group(procs, logs)


def fence(ckpt: Path, generation: int) -> None:
    """What the coordinator does before starting `generation`."""
    tmp = ckpt / "FENCE.tmp"
    tmp.write_text(f"{generation}\n")
    os.replace(tmp, ckpt / "FENCE")


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def logged_steps(ckpt: Path) -> int:
    path = ckpt / "steps.jsonl"
    return len(path.read_text().splitlines()) if path.exists() else 0


def latest_model(ckpt: Path) -> tuple[int, dict[str, torch.Tensor], dict]:
    found = CheckpointStore(ckpt, generation=0).latest()
    assert found is not None, f"no checkpoint in {ckpt}"
    return found.ref.step, found.payload["model"], found.payload["train"]


def assert_ok(group: Group, codes: list[int]) -> None:
    assert codes == [0] * len(codes), "\n".join(group.output(r) for r in range(len(codes)))


@pytest.mark.timeout(90)
def test_resume_at_another_world_size_matches_an_uninterrupted_run(tmp_path: Path) -> None:
    common = ("--steps", "20", "--global-batch", "64", "--ckpt-every", "5")
    straight = tmp_path / "straight" / "ckpt"
    straight.parent.mkdir()
    group = launch(straight, 2, 0, *common)
    assert_ok(group, group.wait())

    resumed = tmp_path / "resumed" / "ckpt"
    resumed.parent.mkdir()
    group = launch(resumed, 2, 0, *common, "--stop-after", "8")
    assert_ok(group, group.wait())
    assert latest_model(resumed)[0] == 8
    fence(resumed, 1)
    # 64 is not divisible by 3 (shares 22/21/21), and micro-batches of <= 8 accumulate.
    group = launch(resumed, 3, 1, *common, "--max-micro-batch", "8")
    assert_ok(group, group.wait())
    assert "FINAL" in group.output(0) and "steps=20" in group.output(0)

    step_a, model_a, train_a = latest_model(straight)
    step_b, model_b, train_b = latest_model(resumed)
    assert step_a == step_b == 20
    assert train_a["samples_seen"] == train_b["samples_seen"] == 20 * 64
    assert model_a.keys() == model_b.keys()
    for name, tensor in model_a.items():
        torch.testing.assert_close(model_b[name], tensor, rtol=1e-4, atol=1e-5, msg=name)
    history = committed_history(resumed)
    assert history.ok and history.steps == list(range(1, 21)) and not history.lost


@pytest.mark.timeout(90)
def test_sigterm_to_one_rank_stops_all_at_one_step_commits_and_resumes(tmp_path: Path) -> None:
    ckpt = tmp_path / "ckpt"
    group = launch(ckpt, 3, 0, "--steps", "1000", "--step-sleep", "0.05", "--ckpt-every", "50")
    wait_until(lambda: logged_steps(ckpt) >= 6, 45, "six logged steps")
    group.procs[1].send_signal(signal.SIGTERM)  # a notice that reached only one worker
    assert_ok(group, group.wait())

    stops = {int(re.search(r"STOPPED step=(\d+)", group.output(r))[1]) for r in range(3)}
    assert len(stops) == 1, f"ranks stopped at different steps: {stops}"
    stop_step = stops.pop()
    assert 6 <= stop_step < 1000
    assert latest_model(ckpt)[0] == stop_step  # committed although not a multiple of 50
    assert committed_history(ckpt).steps[-1] == stop_step

    fence(ckpt, 1)
    group = launch(ckpt, 2, 1, "--steps", str(stop_step + 4), "--ckpt-every", "50")
    assert_ok(group, group.wait())
    assert f"steps={stop_step + 4}" in group.output(0)
    history = committed_history(ckpt)
    assert history.ok and history.steps == list(range(1, stop_step + 5))
    assert history.lost == []  # a stop with notice loses nothing


@pytest.mark.timeout(90)
def test_loss_without_notice_loses_at_most_the_checkpoint_interval(tmp_path: Path) -> None:
    ckpt = tmp_path / "ckpt"
    group = launch(ckpt, 2, 0, "--steps", "1000", "--step-sleep", "0.03", "--ckpt-every", "5")
    wait_until(lambda: logged_steps(ckpt) >= 13, 45, "thirteen logged steps")
    group.kill()  # SIGKILL: nobody gets to commit
    killed_at = logged_steps(ckpt)

    fence(ckpt, 1)
    group = launch(ckpt, 3, 1, "--steps", str(killed_at + 3), "--ckpt-every", "5")
    assert_ok(group, group.wait())
    history = committed_history(ckpt)
    assert history.ok, history
    assert history.steps == list(range(1, killed_at + 4))
    assert len(history.lost) <= 5
    assert all(r.generation == 0 for r in history.lost)
    assert {r.generation for r in history.lineage[-3:]} == {1}


@pytest.mark.timeout(60)
def test_a_fenced_off_worker_cannot_commit(tmp_path: Path) -> None:
    ckpt = tmp_path / "ckpt"
    group = launch(ckpt, 1, 0, "--steps", "1000", "--step-sleep", "0.02", "--ckpt-every", "5")
    store = CheckpointStore(ckpt, generation=0)
    wait_until(lambda: bool(store.refs()), 45, "a first checkpoint")
    fence(ckpt, 1)  # generation 1 has started elsewhere
    before = max(r.step for r in store.refs())
    codes = group.wait()
    assert codes == [3], group.output(0)  # StaleGenerationError's exit code
    assert "StaleGenerationError" in group.output(0)
    # at most a commit that was already past its fence check when FENCE was written
    assert max(r.step for r in store.refs()) <= before + 5
    assert not list(ckpt.glob(".tmp-*"))
