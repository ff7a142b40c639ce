"""The recipe's pure parts: config errors, phases, LR schedule, model init, optimizer groups,
per-rank sample plans; and the DALI pipelines on a few generated JPEGs."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from trainer import elastic
from trainer.recipe.config import (ConfigError, OptimizerConfig, ScheduleConfig, apply_overrides,
                                   load_config, parse_config)
from trainer.recipe.folder import rank_indices, share_size, val_shard
from trainer.recipe.metrics import topk_correct
from trainer.recipe.models import BasicBlock, Bottleneck, ResNet, build_model
from trainer.recipe.optim import build_optimizer
from trainer.recipe.phases import Phase, PhasePlan
from trainer.recipe.schedule import LRSchedule, shape

pytestmark = pytest.mark.timeout(60)

PHASES = [{"epochs": [0, 2], "size": 16, "global_batch": 100},
          {"epochs": [2, 4], "size": 24, "global_batch": 50, "lr_scale": 0.5,
           "rect_val": True}]


def recipe(**changes: object) -> dict:
    raw = {"model": {"arch": "resnet18", "num_classes": 10, "width": 8},
           "phases": [dict(p) for p in PHASES]}
    raw.update(changes)
    return raw


# -- config ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["digits_cpu", "resnet50_imagenet"])
def test_bundled_recipes_are_valid(name: str) -> None:
    cfg = load_config(name)
    assert cfg.phases[0].epochs[0] == 0
    assert cfg.total_epochs > 0


def test_real_recipe_follows_the_18_minute_shape() -> None:
    cfg = load_config("resnet50_imagenet")
    sizes = [p.size for p in cfg.phases]
    batches = [p.global_batch for p in cfg.phases]
    assert cfg.model.arch == "resnet50" and sizes == sorted(sizes) and sizes[0] == 128
    assert batches[-1] < batches[0] and cfg.phases[-1].rect_val
    assert cfg.optimizer.nesterov and cfg.optimizer.label_smoothing > 0


def test_unknown_key_is_named() -> None:
    with pytest.raises(ConfigError, match=r"x\.toml: unknown key 'model\.colour'"):
        parse_config(recipe(model={"arch": "resnet18", "colour": "red"}), "x.toml")


def test_wrong_type_in_phase_table_names_the_row() -> None:
    bad = recipe()
    bad["phases"][1]["size"] = "big"
    with pytest.raises(ConfigError, match=r"key 'phases\[1\]\.size'"):
        parse_config(bad)


def test_phases_must_tile_the_run() -> None:
    bad = recipe()
    bad["phases"][1]["epochs"] = [3, 4]
    with pytest.raises(ConfigError, match=r"phases\[1\]\.epochs must start where phases\[0\]"):
        parse_config(bad)
    with pytest.raises(ConfigError, match=r"phases.*at least 1"):
        parse_config(recipe(phases=[]))


def test_overrides_parse_toml_values() -> None:
    raw = apply_overrides(recipe(), ["optimizer.lr=0.5", "data.train_dir=/tmp/x",
                                     "target.accuracy=0.9"])
    cfg = parse_config(raw)
    assert cfg.optimizer.lr == 0.5 and cfg.data.train_dir == "/tmp/x"
    assert cfg.target is not None and cfg.target.metric == "top5"
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        apply_overrides({}, ["novalue"])


# -- phases and schedule -----------------------------------------------------------------


def test_phase_plan_in_samples() -> None:
    plan = PhasePlan([Phase(**p) for p in PHASES], dataset_size=1000)
    assert [(s.start, s.end) for s in plan.spans] == [(0, 2000), (2000, 4000)]
    assert plan.at(1999).index == 0 and plan.at(2000).index == 1
    assert plan.spans[0].steps_left(0) == 20
    assert plan.spans[0].steps_left(1950) == 1  # the last step overshoots by 50
    assert plan.at(2050).index == 1 and plan.spans[1].steps_left(2050) == 39
    assert [s.index for s in plan.remaining(2050)] == [1]
    assert plan.remaining(4000) == []


def test_warmup_then_decay_shape() -> None:
    cfg = ScheduleConfig(warmup_epochs=2, warmup_start=0.1, decay="linear", final_factor=0.0)
    assert shape(0, 10, cfg) == pytest.approx(0.1)
    assert shape(1, 10, cfg) == pytest.approx(0.55)
    assert shape(2, 10, cfg) == pytest.approx(1.0)
    assert shape(6, 10, cfg) == pytest.approx(0.5)
    assert shape(10, 10, cfg) == pytest.approx(0.0)
    cos = ScheduleConfig(warmup_epochs=0, decay="cosine", final_factor=0.1)
    assert shape(5, 10, cos) == pytest.approx(0.55)


def test_lr_is_a_function_of_samples_scaled_by_phase_batch() -> None:
    plan = PhasePlan([Phase(**p) for p in PHASES], dataset_size=1000)
    opt = OptimizerConfig(lr=0.1, base_batch=100)
    sched = LRSchedule(opt, ScheduleConfig(warmup_epochs=1, warmup_start=0.0), plan)
    assert sched.lr(0) == 0.0
    assert sched.lr(1000) == pytest.approx(0.1)  # peak: batch 100 / base 100
    # phase 2: batch 50 -> x0.5, lr_scale 0.5 -> x0.25 of the shape at epoch 2 (2/3 left)
    assert sched.lr(2000) == pytest.approx(0.1 * 0.25 * (1 - 1 / 3))
    # the same position reached by different step sizes (world sizes) gives the same LR
    by_small = by_large = 0
    while by_small < 3000:
        by_small += 50
    while by_large < 3000:
        by_large += 150
    assert sched.lr(by_small) == sched.lr(by_large)
    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    assert sched.apply(optimizer, 1500) == optimizer.param_groups[0]["lr"] == sched.lr(1500)


# -- model and optimizer -----------------------------------------------------------------


def test_last_bn_gamma_of_every_block_is_zero() -> None:
    for arch, block in (("resnet18", BasicBlock), ("resnet50", Bottleneck)):
        cfg = parse_config(recipe(model={"arch": arch, "num_classes": 10, "width": 8})).model
        model = build_model(cfg)
        blocks = [m for m in model.modules() if isinstance(m, block)]
        assert len(blocks) == (8 if arch == "resnet18" else 16)
        last = {id(b.last_bn) for b in blocks}
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                expected = 0.0 if id(m) in last else 1.0
                assert torch.all(m.weight == expected)


def test_resnet50_shape_and_size() -> None:
    cfg = parse_config(recipe(model={"arch": "resnet50", "num_classes": 1000})).model
    model = build_model(cfg)
    params = sum(p.numel() for p in model.parameters())
    assert 25.0e6 < params < 26.0e6  # ResNet-50: 25.6 M
    small = ResNet(Bottleneck, (1, 1, 1, 1), 7, width=8)
    assert small(torch.randn(2, 3, 32, 32)).shape == (2, 7)


def test_no_weight_decay_on_bn_and_bias() -> None:
    model = build_model(parse_config(recipe()).model)
    optimizer = build_optimizer(model, OptimizerConfig(weight_decay=1e-4))
    decay, no_decay = optimizer.param_groups
    assert decay["weight_decay"] == 1e-4 and no_decay["weight_decay"] == 0.0
    assert optimizer.defaults["nesterov"] is True
    exempt = {id(p) for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)
              for p in m.parameters()} | {id(model.fc.bias)}
    assert {id(p) for p in no_decay["params"]} == exempt
    assert all(p.dim() == 4 for p in decay["params"] if p is not model.fc.weight)
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))


# -- data plans --------------------------------------------------------------------------


def _global_read(sampler: elastic.GlobalSampler, start: int, batch: int, world: int,
                 steps: int) -> list[int]:
    per_rank = [rank_indices(sampler, start, batch, world, r, steps) for r in range(world)]
    shares = [share_size(batch, world, r) for r in range(world)]
    out: list[int] = []
    for k in range(steps):
        for r in range(world):
            out.extend(per_rank[r][k * shares[r]:(k + 1) * shares[r]].tolist())
    return out


def test_rank_plans_continue_the_stream_at_another_world_size() -> None:
    sampler = elastic.GlobalSampler(97, seed=3)
    first = _global_read(sampler, 0, 20, world=2, steps=7)  # crosses an epoch boundary
    rest = _global_read(sampler, 140, 20, world=3, steps=5)  # 20 % 3 != 0: uneven shares
    assert first + rest == sampler.take(0, 240).tolist()
    epoch0 = sorted((first + rest)[:97])
    assert epoch0 == list(range(97))  # every sample once per epoch


def test_val_shards_cover_the_set_once() -> None:
    for world in (1, 2, 3, 7):
        ids = [i for r in range(world) for i in val_shard(50, world, r)]
        assert ids == list(range(50))


def test_topk_correct_counts() -> None:
    logits = torch.tensor([[0.0, 1, 2, 3, 4, 5, 6], [6.0, 5, 4, 3, 2, 1, 0]])
    labels = torch.tensor([6, 5])
    assert topk_correct(logits, labels).tolist() == [1.0, 1.0, 2.0]


# -- DALI pipelines ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def jpegs(tmp_path_factory):
    pytest.importorskip("nvidia.dali")
    from trainer.datasets import write_synthetic
    from trainer.recipe.folder import FolderIndex

    root = write_synthetic(tmp_path_factory.mktemp("jpegs") / "s", count=40, height=48,
                           width=64, classes=4)
    return FolderIndex.scan(root / "train")


def test_train_stream_reads_the_planned_samples_across_a_resize(jpegs) -> None:
    from trainer.recipe.config import DataConfig
    from trainer.recipe.data import Placement, TrainStream

    phase = Phase(epochs=(0, 3), size=16, global_batch=12)
    span = PhasePlan([phase], len(jpegs)).spans[0]
    sampler = elastic.GlobalSampler(len(jpegs), seed=0)
    where = Placement(None, 1, 0)
    # 5 steps at world 2, then the job continues at world 3 from sample 60
    got: dict[int, list[int]] = {}
    for world, start, steps in ((2, 0, 5), (3, 60, 5)):
        for rank in range(world):
            stream = TrainStream(jpegs, span, DataConfig(), sampler, world, rank, start, where)
            for k in range(steps):
                images, ids = stream.next()
                assert images.shape == (share_size(12, world, rank), 3, 16, 16)
                assert images.dtype == torch.float32
                got.setdefault(start // 12 + k, []).extend(ids.tolist())
            stream.close()
    read = [i for k in sorted(got) for i in got[k]]
    assert read == sampler.take(0, 120).tolist()


def test_val_batches_rect_and_square(jpegs) -> None:
    from trainer.recipe.config import DataConfig
    from trainer.recipe.data import Placement, val_batches

    cfg = DataConfig(val_batch=8)
    for rect in (False, True):
        phase = Phase(epochs=(0, 1), size=32, global_batch=4, rect_val=rect)
        labels, shapes = [], set()
        for rank in range(3):
            for images, y in val_batches(jpegs, val_shard(len(jpegs), 3, rank), phase, cfg,
                                         Placement(None, 1, 0)):
                labels.extend(y.tolist())
                shapes.add(tuple(images.shape[1:]))
        assert sorted(labels) == sorted(jpegs.labels.tolist())
        # 64x48 images: square crops, or 4:3 rectangles with a 32 px short side
        assert shapes == ({(3, 32, 32)} if not rect else {(3, 32, 43)})


def test_rect_crops_fit_every_image() -> None:
    from trainer.recipe.data import rect_crops

    sizes = [(64, 48), (60, 48), (48, 64)]
    crops = rect_crops(sizes, 32, 36, batch=2)
    assert crops[0][0] == 32 and crops[0][1] > 32  # landscape batch
    assert crops[1][1] == 32 and crops[1][0] > 32  # portrait batch
    assert math.isclose(crops[0][1] / crops[0][0], np.median([64 / 48, 60 / 48]), rel_tol=0.05)


# -- the command ---------------------------------------------------------------------------


def test_show_prints_the_phase_table_with_scaled_lr(capsys) -> None:
    from trainer.train import main

    assert main(["--config", "resnet50_imagenet", "--set", "optimizer.lr=0.2", "--show"]) == 0
    out = capsys.readouterr().out
    rows = [line.split() for line in out.splitlines()[1:4]]
    assert [(r[2], r[-2], r[-1]) for r in rows] == [("128", "8192", "6.4"),
                                                     ("224", "4096", "3.2"),
                                                     ("288", "2048", "1.6")]
    assert '"nesterov": true' in out


def test_bad_input_exits_2_naming_what_is_wrong(capsys, tmp_path) -> None:
    from trainer.train import main

    assert main(["--config", "digits_cpu", "--train-dir", str(tmp_path / "nope")]) == 2
    assert f"image folder {tmp_path / 'nope'} does not exist" in capsys.readouterr().err
    assert main(["--config", "digits_cpu", "--set", "phases=[]"]) == 2
    assert "key 'phases'" in capsys.readouterr().err
    assert main(["--config", "no-such-recipe"]) == 2
    assert "no recipe at 'no-such-recipe'" in capsys.readouterr().err


def test_writing_a_data_set_never_replaces_a_users_directory(tmp_path):
    from trainer.datasets import main, write_synthetic

    mine = tmp_path / "photos"
    mine.mkdir()
    (mine / "holiday.jpg").write_bytes(b"precious")
    assert main(["synthetic", str(mine), "--count", "4", "--height", "16", "--width", "16"]) == 2
    assert (mine / "holiday.jpg").read_bytes() == b"precious"

    ours = write_synthetic(tmp_path / "gen", count=4, height=16, width=16)
    assert len(list(ours.rglob("*.jpg"))) == 4
    write_synthetic(ours, count=6, height=16, width=16)  # ours, other parameters: replaced
    assert len(list(ours.rglob("*.jpg"))) == 6 and not (ours / ".writing").exists()
