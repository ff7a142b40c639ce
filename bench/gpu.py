"""The GPU paths of the trainer, each measured against a baseline from the same run.

  train  ResNet-50 training steps as the trainer runs them on a GPU (bf16 autocast,
         channels_last; trainer/recipe/engine.py) against fp32 / contiguous, synthetic tensors.
  dali   the trainer's DALI training pipeline with `mixed` (GPU) JPEG decoding against the
         same pipeline on CPU operators, on generated JPEGs (trainer.datasets.write_synthetic).
  nccl   what a surviving rank pays to re-form its NCCL group in-process (abort the old group,
         init a new one, first all-reduce) against a restart: a new process to its first
         all-reduce. With one GPU the group has one rank; with >= 2 GPUs one rank per GPU,
         the last one is SIGKILLed and the others re-form without it.
  report the table of every part's figures (read from --results), with a verdict each.

Each part appends its rows to --results as JSON lines, so bench/gpu.sh can run each under its
own time limit and a part that hangs is reported as missing. With no part named, all run here.
--cpu-smoke runs every part with tiny sizes on the CPU (DALI's CPU pipeline for both sides,
gloo for NCCL) to test the code paths on any machine; its figures judge nothing.

    python3 bench/gpu.py                    # on a GPU machine; or bash bench/gpu.sh
    .venv/bin/python bench/gpu.py --cpu-smoke
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

PARTS = ("train", "dali", "nccl")

# Minimum ratio (fast path / baseline) for "met": what makes each GPU path worth its
# complexity. bf16 + channels_last is the trainer's reason to autocast at all; GPU decoding
# must clearly beat the CPU threads a rank already has; in-process re-formation exists to be
# much cheaper than a restart.
BARS = {"train": 1.5, "dali": 1.5, "nccl": 5.0}


@dataclass(frozen=True)
class Sizes:
    """How big each part runs: a real GPU run, or the CPU smoke test."""

    smoke: bool
    batch: int           # training images per step
    image: int           # training image side
    width: int           # ResNet-50 width (64 = the real network)
    steps: int           # timed steps per round
    rounds: int          # alternating rounds; the first one warms up and does not count
    jpegs: int           # generated JPEGs for the data pipeline
    jpeg_hw: tuple[int, int]
    dali_batch: int
    crop: int            # pipeline output side
    passes: int          # timed passes over the JPEGs
    threads: int | None  # DALI threads; None: the ResNet-50 recipe's own


GPU = Sizes(False, batch=256, image=224, width=64, steps=15, rounds=3, jpegs=1024,
            jpeg_hw=(375, 500), dali_batch=128, crop=224, passes=4, threads=None)
SMOKE = Sizes(True, batch=4, image=32, width=4, steps=2, rounds=2, jpegs=32,
              jpeg_hw=(48, 64), dali_batch=8, crop=32, passes=1, threads=1)


def row(part: str, figure: str, value: float, unit: str, baseline: str, base_value: float,
        ratio: float, note: str = "") -> dict:
    """One line of the table; ratio is oriented so that higher is better."""
    return {"part": part, "figure": figure, "value": value, "unit": unit,
            "baseline": baseline, "base_value": base_value, "ratio": ratio,
            "bar": BARS[part], "met": ratio >= BARS[part], "note": note}


# -- train ----------------------------------------------------------------------------------


def _train_setup(sizes: Sizes, fast: bool, device):
    """Model, optimizer, loss and one batch, laid out as the engine does for this path."""
    import torch

    from trainer.recipe.config import ModelConfig, OptimizerConfig
    from trainer.recipe.models import build_model
    from trainer.recipe.optim import build_loss, build_optimizer

    layout = torch.channels_last if fast else torch.contiguous_format
    model = build_model(ModelConfig(arch="resnet50", num_classes=1000 if not sizes.smoke else 10,
                                    width=sizes.width,
                                    stem="small" if sizes.smoke else "imagenet"))
    model = model.to(device, memory_format=layout)
    images = torch.randn(sizes.batch, 3, sizes.image, sizes.image, device=device)
    labels = torch.randint(0, model.fc.out_features, (sizes.batch,), device=device)
    return (model, build_optimizer(model, OptimizerConfig()), build_loss(OptimizerConfig()),
            images.contiguous(memory_format=layout), labels)


def _images_per_s(setup, steps: int, fast: bool, device) -> float:
    """Timed training steps: forward (autocast on the fast path), backward, SGD step."""
    import contextlib

    import torch

    model, optimizer, loss_fn, images, labels = setup
    cast = torch.autocast(device.type, dtype=torch.bfloat16) if fast else contextlib.nullcontext()
    _sync(device)
    started = time.perf_counter()
    for _ in range(steps):
        with cast:
            loss = loss_fn(model(images), labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    _sync(device)
    return steps * images.shape[0] / (time.perf_counter() - started)


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def part_train(sizes: Sizes) -> list[dict]:
    import torch

    device = _device(sizes)
    torch.backends.cudnn.benchmark = device.type == "cuda"  # as the engine sets it
    best = {True: 0.0, False: 0.0}
    setups = {fast: _train_setup(sizes, fast, device) for fast in (True, False)}
    for rnd in range(sizes.rounds):  # alternate, so clocks and load treat both alike
        for fast, setup in setups.items():
            rate = _images_per_s(setup, sizes.steps, fast, device)
            if rnd > 0:
                best[fast] = max(best[fast], rate)
    what = f"ResNet-50 train step, batch {sizes.batch}, {sizes.image} px"
    return [row("train", f"{what}: bf16 autocast + channels_last", best[True], "img/s",
                "fp32, contiguous (cuDNN's TF32 default)", best[False],
                best[True] / best[False], f"after a warm-up round, best of "
                f"{sizes.rounds - 1} x {sizes.steps} steps, no DDP, {torch.__version__}")]


def _device(sizes: Sizes):
    import torch

    if sizes.smoke:
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise RuntimeError("no CUDA device visible to torch: on a CPU machine use --cpu-smoke")
    return torch.device("cuda", 0)


# -- dali -----------------------------------------------------------------------------------


def _pipeline_rate(files: list[str], sizes: Sizes, threads: int, device_id: int | None) -> float:
    """images/s of trainer.recipe.data.train_pipeline after one warm-up pass."""
    from nvidia.dali.plugin.pytorch import DALIGenericIterator

    from trainer.recipe.config import DataConfig
    from trainer.recipe.data import Placement, train_pipeline

    cfg = DataConfig(threads=threads, min_scale=0.35, flip=True)
    pipe = train_pipeline(files, list(range(len(files))), sizes.dali_batch, sizes.crop, cfg,
                          Placement(device_id, threads, 0))
    it = iter(DALIGenericIterator(pipe, ["x", "ids"]))
    steps = len(files) // sizes.dali_batch
    for _ in range(steps):
        next(it)
    count, started = 0, time.perf_counter()
    for _ in range(sizes.passes * steps):
        count += next(it)[0]["x"].shape[0]
    if device_id is not None:
        import torch

        torch.cuda.synchronize(device_id)
    return count / (time.perf_counter() - started)


def part_dali(sizes: Sizes) -> list[dict]:
    from trainer.datasets import write_synthetic
    from trainer.recipe.config import load_config
    from trainer.recipe.data import DaliMissingError, require_dali
    from trainer.recipe.folder import FolderIndex

    try:
        require_dali()
    except DaliMissingError as exc:
        return [{"part": "dali", "skipped": f"DALI does not import here: {exc}"}]
    threads = sizes.threads or load_config("resnet50_imagenet").data.threads
    device_id = None if sizes.smoke else _device(sizes).index
    height, width = sizes.jpeg_hw
    with tempfile.TemporaryDirectory(prefix="coord-gpu-bench-") as tmp:
        root = write_synthetic(Path(tmp) / "jpegs", count=sizes.jpegs, height=height,
                               width=width)
        files = list(FolderIndex.scan(root / "train").files)
        gpu = _pipeline_rate(files, sizes, threads, device_id)
        cpu = _pipeline_rate(files, sizes, threads, None)
    where = "CPU operators (smoke)" if sizes.smoke else "mixed decoding on GPU 0"
    return [row("dali", f"train_pipeline, {where}", gpu, "img/s",
                f"CPU operators, threads={threads}", cpu, gpu / cpu,
                f"{len(files)} JPEGs {width}x{height} -> {sizes.crop} px, batch "
                f"{sizes.dali_batch}, {sizes.passes} timed passes after one warm-up")]


# -- nccl -----------------------------------------------------------------------------------


def part_nccl(sizes: Sizes) -> list[dict]:
    import torch
    from gpu_group import reform

    gpus = 0 if sizes.smoke else torch.cuda.device_count()
    if not sizes.smoke and gpus == 0:
        raise RuntimeError("no CUDA device visible to torch: on a CPU machine use --cpu-smoke")
    backend, world = ("gloo", 2) if sizes.smoke else ("nccl", gpus)
    got = reform(backend, world)
    lost = f"after a SIGKILL of 1 of {world} ranks" if world > 1 else "of a 1-rank group"
    rows = [row("nccl", f"{backend} in-process re-form {lost}", got["reform_s"], "s",
                "restart: a new process to its first all-reduce", got["restart_s"],
                got["restart_s"] / got["reform_s"],
                f"abort {got['abort_s']:.3g} s + init {got['init_s']:.3g} s + first "
                f"all-reduce {got['allreduce_s']:.3g} s; loss detection not included")]
    if world == 1:
        rows.append({"part": "nccl", "figure": "multi-GPU re-formation (kill a rank, the "
                     "survivors re-form)", "skipped": "needs >= 2 GPUs; this machine has 1"})
    return rows


# -- report ---------------------------------------------------------------------------------


def _environment(smoke: bool) -> str:
    import importlib.metadata as md

    import torch

    card = "CPU (smoke)" if smoke else "no CUDA device" if not torch.cuda.is_available() \
        else f"{torch.cuda.get_device_name(0)} x{torch.cuda.device_count()}"
    dali = next((f"{d.metadata['Name']} {d.version}" for d in md.distributions()
                 if (d.metadata["Name"] or "").startswith("nvidia-dali")), "no DALI")
    return (f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}  {card}  torch "
            f"{torch.__version__} (CUDA {torch.version.cuda})  {dali}  {os.cpu_count()} CPUs")


def _fmt(value: float, unit: str) -> str:
    return f"{value:,.0f} {unit}" if value >= 100 else f"{value:.3g} {unit}"


def report(results: Path, smoke: bool) -> int:
    """Print the table; 1 when a part left no row (it crashed or ran out of time)."""
    rows = [json.loads(line) for line in results.read_text().splitlines() if line.strip()] \
        if results.exists() else []
    print(f"\n== coord GPU bench  {_environment(smoke)}")
    if smoke:
        print("   --cpu-smoke: tiny sizes on the CPU; the figures test code paths, not speed")
    missing = [p for p in PARTS if not any(r["part"] == p for r in rows)]
    for r in rows:
        if "skipped" in r or "error" in r:
            what = f" {r['figure']}:" if "figure" in r else ""
            print(f"\n[{r['part']}]{what} not measured: {r.get('skipped') or r.get('error')}")
            continue
        print(f"\n[{r['part']}] {r['figure']}")
        print(f"   {_fmt(r['value'], r['unit']):>14}   vs {r['baseline']}: "
              f"{_fmt(r['base_value'], r['unit'])}")
        verdict = "met" if r["met"] else "NOT met"
        print(f"   ratio {r['ratio']:.2f}x, bar >= {r['bar']}x: {verdict}")
        if r.get("note"):
            print(f"   ({r['note']})")
    for part in missing:
        print(f"\n[{part}] not measured: no result (it crashed or ran out of time; see the log)")
    failed = missing or [r for r in rows if "error" in r]
    return 1 if failed else 0


# -- the command line -----------------------------------------------------------------------


def run_part(part: str, sizes: Sizes, results: Path) -> int:
    """Run one part and append its rows; an exception becomes an error row, not a silence."""
    print(f"-- {part}", flush=True)
    code = 0
    try:
        rows = {"train": part_train, "dali": part_dali, "nccl": part_nccl}[part](sizes)
    except Exception as exc:  # noqa: BLE001 -- any failure is a result to report
        traceback.print_exc()
        rows, code = [{"part": part, "error": f"{type(exc).__name__}: {exc}"}], 1
    with open(results, "a") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    return code


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("part", nargs="?", choices=(*PARTS, "report", "all"), default="all")
    p.add_argument("--cpu-smoke", action="store_true",
                   help="tiny sizes on the CPU, gloo for NCCL: tests the code paths")
    p.add_argument("--results", type=Path, help="JSON-lines file the parts append to "
                   "(default for 'all': a temporary file)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sizes = SMOKE if args.cpu_smoke else GPU
    if args.part == "all":
        with tempfile.TemporaryDirectory(prefix="coord-gpu-bench-") as tmp:
            results = args.results or Path(tmp) / "results.jsonl"
            for part in PARTS:
                run_part(part, sizes, results)
            return report(results, args.cpu_smoke)
    if args.results is None:
        sys.exit(f"error: --results FILE is needed to run '{args.part}' alone")
    if args.part == "report":
        return report(args.results, args.cpu_smoke)
    return run_part(args.part, sizes, args.results)


if __name__ == "__main__":
    sys.exit(main())
