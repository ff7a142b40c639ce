"""In-process tests of trainer.elastic: checkpoint atomicity and fencing, the sampler, the
batch policy and the step-log lineage. No process group, no subprocesses: fast."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import pytest
import torch
from torch import nn

from trainer.elastic import (CheckpointStore, ElasticConfig, FenceFileError, GlobalSampler,
                             StaleGenerationError, TrainState, committed_history, init,
                             plan_micro_batches)
from trainer.elastic.checkpoint import MAGIC
from trainer.elastic.policy import plan_batch, rescale_lr
from trainer.elastic.state import apply_payload, build_payload
from trainer.elastic.steplog import StepLog, StepRecord, build_history

pytestmark = pytest.mark.timeout(30)


def _objects(seed: int = 0) -> tuple[nn.Module, torch.optim.Optimizer, object]:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (1 + s))
    return model, opt, sched


def _train(model: nn.Module, opt: torch.optim.Optimizer, sched: object, steps: int) -> None:
    for _ in range(steps):
        model(torch.randn(5, 4)).pow(2).mean().backward()
        opt.step()
        sched.step()
        opt.zero_grad()


def _save(store: CheckpointStore, step: int, seed: int = 0) -> None:
    model, opt, sched = _objects(seed)
    store.save(step, build_payload(TrainState(step=step, samples_seen=step * 8), model, opt,
                                   sched))


# -- checkpoint contents -------------------------------------------------------------------

def test_roundtrip_restores_model_optimizer_scheduler_rng_and_position(tmp_path: Path) -> None:
    model, opt, sched = _objects()
    _train(model, opt, sched, 3)
    state = TrainState(step=3, samples_seen=24, generation=2, extra={"best": 0.5})
    random.seed(7)
    torch.manual_seed(7)
    store = CheckpointStore(tmp_path, generation=2)
    store.save(3, build_payload(state, model, opt, sched))
    expected_py, expected_torch = random.random(), torch.rand(3)

    random.seed(99)
    torch.manual_seed(99)
    model2, opt2, sched2 = _objects(seed=1)
    loaded = store.latest()
    assert loaded is not None and loaded.ref.step == 3
    restored = apply_payload(loaded.payload, model2, opt2, sched2)

    assert restored == state
    for a, b in zip(model.parameters(), model2.parameters(), strict=True):
        assert torch.equal(a, b)
    momentum = [opt.state[p]["momentum_buffer"] for p in model.parameters()]
    momentum2 = [opt2.state[p]["momentum_buffer"] for p in model2.parameters()]
    assert all(torch.equal(a, b) for a, b in zip(momentum, momentum2, strict=True))
    assert sched2.last_epoch == 3 and sched2.get_last_lr() == sched.get_last_lr()
    assert random.random() == expected_py
    assert torch.equal(torch.rand(3), expected_torch)


# -- atomicity -----------------------------------------------------------------------------

def test_torn_and_partial_checkpoints_are_skipped_and_previous_kept(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path, generation=0, keep=5)
    _save(store, 10)
    _save(store, 20)
    good = store.latest()
    assert good is not None and good.ref.step == 20

    newest = tmp_path / "ckpt-0000000020-g0.pt"
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])  # torn in place
    (tmp_path / "ckpt-0000000030-g0.pt").write_bytes(b"garbage")  # not a checkpoint
    (tmp_path / ".tmp-ckpt-0000000040-g0.pt.x").write_bytes(MAGIC + b"{")  # writer killed
    renamed = (tmp_path / "ckpt-0000000010-g0.pt").read_bytes()
    (tmp_path / "ckpt-0000000050-g0.pt").write_bytes(renamed)  # header says step 10

    latest = store.latest()
    assert latest is not None
    assert latest.ref.step == 10
    assert latest.payload["train"]["step"] == 10


def test_bit_flip_is_detected(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path, generation=0)
    _save(store, 10)
    path = tmp_path / "ckpt-0000000010-g0.pt"
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF
    path.write_bytes(bytes(data))
    assert store.latest() is None


def test_keeps_last_two_and_previous_survives_a_failed_commit(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = CheckpointStore(tmp_path, generation=0, keep=2)
    for step in (10, 20, 30):
        _save(store, step)
    assert [r.step for r in store.refs()] == [20, 30]

    def crash(*_a: object) -> None:
        raise OSError("disk gone")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError):
        _save(store, 40)
    monkeypatch.undo()
    assert [r.step for r in store.refs()] == [20, 30]
    assert not list(tmp_path.glob(".tmp-*")), "temporary file left behind"
    latest = store.latest()
    assert latest is not None and latest.ref.step == 30


# -- fencing -------------------------------------------------------------------------------

def test_fence_refuses_a_stale_generation(tmp_path: Path) -> None:
    _save(CheckpointStore(tmp_path, generation=2), 10)
    (tmp_path / "FENCE").write_text("3\n")

    with pytest.raises(StaleGenerationError) as caught:
        _save(CheckpointStore(tmp_path, generation=2), 20)
    assert (caught.value.generation, caught.value.fence) == (2, 3)
    assert [r.step for r in CheckpointStore(tmp_path, 3).refs()] == [10]
    assert not list(tmp_path.glob(".tmp-*"))

    _save(CheckpointStore(tmp_path, generation=3), 20)  # the live generation commits
    assert [(r.step, r.generation) for r in CheckpointStore(tmp_path, 3).refs()] == [
        (10, 2), (20, 3)]


def test_unreadable_fence_refuses(tmp_path: Path) -> None:
    (tmp_path / "FENCE").write_text("not-a-number")
    with pytest.raises(FenceFileError):
        _save(CheckpointStore(tmp_path, generation=5), 1)


def test_init_refuses_a_worker_of_a_fenced_generation(tmp_path: Path) -> None:
    (tmp_path / "FENCE").write_text("2")
    environ = {"RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1",
               "MASTER_PORT": "1", "COORD_GENERATION": "1",
               "COORD_CHECKPOINT_DIR": str(tmp_path)}
    with pytest.raises(StaleGenerationError):
        init(ElasticConfig(stop_signals=()), environ=environ)


def test_a_new_job_takes_the_directory_over_and_fences_the_old_one(tmp_path: Path) -> None:
    """A job resuming from another job's checkpoints starts again at its own generation 1; the
    old job's workers, whatever their generation, can no longer commit there."""
    from contract.fence import write_fence

    write_fence(tmp_path, 4, "old-job")
    _save(CheckpointStore(tmp_path, generation=4, job_id="old-job"), 10)
    write_fence(tmp_path, 1, "new-job")
    _save(CheckpointStore(tmp_path, generation=1, job_id="new-job"), 20)
    with pytest.raises(StaleGenerationError, match="taken the checkpoint directory over"):
        _save(CheckpointStore(tmp_path, generation=4, job_id="old-job"), 30)
    write_fence(tmp_path, 1, "new-job")  # never lowered, never re-taken by the same job
    assert (tmp_path / "FENCE").read_text().split() == ["1", "new-job"]
    assert [r.step for r in CheckpointStore(tmp_path, 1).refs()] == [10, 20]


# -- sampler -------------------------------------------------------------------------------

def _global_sequence(world: int, steps: int, batch: int, micro: int | None) -> list[int]:
    sampler = GlobalSampler(dataset_size=50, seed=3)
    seen: list[int] = []
    position = 0
    for _ in range(steps):
        step_indices: list[int] = []
        weight_total = 0.0
        for rank in range(world):
            plan = plan_micro_batches(sampler, position, batch, world, rank, micro)
            if micro:
                assert all(len(mb) <= micro for mb in plan)
            step_indices += [i for mb in plan for i in mb.indices.tolist()]
            weight_total += sum(mb.weight for mb in plan)
        assert len(step_indices) == batch
        assert weight_total == pytest.approx(world)  # DDP's 1/world makes it a mean
        seen += step_indices
        position += batch
    return seen


@pytest.mark.parametrize(("batch", "micro"), [(12, None), (16, None), (16, 4), (7, 2)])
def test_sample_sequence_is_independent_of_world_size(batch: int, micro: int | None) -> None:
    sequences = {w: _global_sequence(w, steps=9, batch=batch, micro=micro) for w in (1, 2, 3)}
    assert sequences[1] == sequences[2] == sequences[3]
    first_epoch = sequences[1][:50]
    assert sorted(first_epoch) == list(range(50))  # each epoch is a permutation
    assert first_epoch != list(range(50))


def test_epochs_differ_and_seed_matters() -> None:
    a = GlobalSampler(50, seed=3)
    assert not torch.equal(a.permutation(0), a.permutation(1))
    assert not torch.equal(a.permutation(0), GlobalSampler(50, seed=4).permutation(0))
    assert torch.equal(a.take(45, 10), torch.cat([a.permutation(0)[45:], a.permutation(1)[:5]]))


def test_global_batch_smaller_than_world_is_refused() -> None:
    with pytest.raises(ValueError):
        plan_micro_batches(GlobalSampler(10, 0), 0, 2, 3, 0)


def test_weighted_uneven_shares_give_the_full_batch_gradient() -> None:
    """Simulate DDP (mean of per-rank gradients) with uneven shares and accumulation."""
    torch.manual_seed(0)
    x, y = torch.randn(50, 4), torch.randn(50, 1)
    model = nn.Linear(4, 1)
    sampler = GlobalSampler(50, seed=1)
    batch = sampler.take(0, 16)
    nn.functional.mse_loss(model(x[batch]), y[batch]).backward()
    expected = [p.grad.clone() for p in model.parameters()]

    world = 3
    per_rank = []
    for rank in range(world):
        model.zero_grad()
        for mb in plan_micro_batches(sampler, 0, 16, world, rank, max_micro_batch=2):
            (nn.functional.mse_loss(model(x[mb.indices]), y[mb.indices]) * mb.weight).backward()
        per_rank.append([p.grad.clone() for p in model.parameters()])
    averaged = [sum(g) / world for g in zip(*per_rank, strict=True)]
    for got, want in zip(averaged, expected, strict=True):
        torch.testing.assert_close(got, want)


# -- batch policy ----------------------------------------------------------------------------

def test_linear_lr_scales_batch_and_lr_and_survives_scheduler_steps() -> None:
    assert plan_batch("keep_global", 64, 3, 2).global_batch == 64
    plan = plan_batch("linear_lr", 64, 3, 2)
    assert (plan.global_batch, plan.lr_scale) == (96, 1.5)
    _, opt, sched = _objects()
    rescale_lr(opt, sched, plan.lr_scale)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.15)
    opt.step()
    sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(0.15 / 2)
    with pytest.raises(ValueError):
        plan_batch("bogus", 64, 3, 2)  # type: ignore[arg-type]


# -- step log --------------------------------------------------------------------------------

def _rec(step: int, gen: int) -> StepRecord:
    return StepRecord(step=step, generation=gen, loss=1.0, samples=step * 4, t=0.0)


def test_history_of_a_clean_resume_counts_lost_steps() -> None:
    records = [_rec(s, 0) for s in range(1, 13)] + [_rec(s, 1) for s in range(11, 21)]
    records.append(_rec(13, 0))  # a slow worker of gen 0 logging after gen 1 started
    history = build_history(records)
    assert history.steps == list(range(1, 21))
    assert history.ok
    assert [(r.step, r.generation) for r in history.lost] == [(11, 0), (12, 0), (13, 0)]
    assert all(r.generation == 1 for r in history.lineage[10:])


def test_history_detects_a_gap_across_generations() -> None:
    records = [_rec(s, 0) for s in range(1, 11)] + [_rec(s, 1) for s in range(13, 16)]
    history = build_history(records)
    assert history.gaps == [(11, 12)]
    assert not history.ok


def test_history_detects_repeats_within_a_generation() -> None:
    records = [_rec(s, 0) for s in (1, 2, 3, 3, 4)]
    history = build_history(records)
    assert [r.step for r in history.repeats] == [3]
    assert history.steps == [1, 2, 3, 4]
    assert not history.ok


def test_history_rejects_a_lineage_not_starting_at_one() -> None:
    history = build_history([_rec(s, 0) for s in (3, 4)])
    assert history.gaps == [(1, 2)] and not history.ok


def test_steplog_file_roundtrip_skips_torn_last_line(tmp_path: Path) -> None:
    log = StepLog(tmp_path)
    for step in (1, 2, 3):
        log.append(step, 0, 0.5, step * 8)
    log.close()
    with (tmp_path / "steps.jsonl").open("a") as fh:
        fh.write('{"step": 4, "gener')
    history = committed_history(tmp_path)
    assert history.steps == [1, 2, 3] and history.ok
    first = json.loads((tmp_path / "steps.jsonl").read_text().splitlines()[0])
    assert set(first) == {"step", "generation", "loss", "samples", "t"}


def test_a_leader_that_healed_past_steps_it_did_not_log_fills_them_in(tmp_path: Path) -> None:
    """The leader discarded steps a peer committed, healed from that peer and logs again:
    the steps in between belong to the lineage and must not read as a gap."""
    log = StepLog(tmp_path)
    for step in (1, 2, 3):
        log.append(step, 1, 0.5, step * 8)
    log.backfill(5, 1, None, 40, batch=8)
    log.append(6, 1, 0.4, 48)
    log.backfill(5, 1, None, 40, batch=8)  # already there: nothing written twice
    log.close()
    history = committed_history(tmp_path)
    assert history.steps == [1, 2, 3, 4, 5, 6] and history.ok
    assert [r.samples for r in history.lineage] == [8, 16, 24, 32, 40, 48]
