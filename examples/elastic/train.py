"""Elastic data-parallel training of a small conv net on synthetic images, with coord.

The images are generated from a seed (4 classes of coloured stripe/checker/blob patterns plus
noise), so every node has the same data without a download and the net really learns.

    python train.py --steps 300                              # alone
    coord submit job.toml                                    # 3 nodes, survives losing one

Under coord the script takes the in-process (torchft) path when coord allows it (the default
`[fault_tolerance] mode = "auto"`, or "inprocess"): survivors of a node loss keep their
processes. With mode = "restart" it uses the restart path (every worker restarts from the
newest snapshot).

Flags default from the environment (TRAIN_STEPS, TRAIN_GLOBAL_BATCH, TRAIN_CKPT_EVERY,
TRAIN_LR, TRAIN_STEP_SLEEP), so a job can tune a run without editing its command.
"""

from __future__ import annotations

import argparse
import gc
import math
import os
import sys
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from trainer import elastic
from trainer.elastic import inprocess

NUM_CLASSES = 4
IMAGE_SIZE = 16


def make_dataset(size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`size` 3x16x16 images: class pattern x random colour + Gaussian noise."""
    gen = torch.Generator().manual_seed(seed)
    coords = torch.arange(IMAGE_SIZE, dtype=torch.float32)
    yy, xx = torch.meshgrid(coords, coords, indexing="ij")
    patterns = torch.stack([
        torch.sin(yy * 1.3),                                   # horizontal stripes
        torch.sin(xx * 1.3),                                   # vertical stripes
        torch.sign(torch.sin(xx * 0.9) * torch.sin(yy * 0.9)),  # checkerboard
        torch.exp(-((xx - 7.5) ** 2 + (yy - 7.5) ** 2) / 18.0) * 2 - 1,  # centred blob
    ])
    labels = torch.randint(0, NUM_CLASSES, (size,), generator=gen)
    colours = torch.rand(size, 3, 1, 1, generator=gen) * 1.5 + 0.25
    noise = torch.randn(size, 3, IMAGE_SIZE, IMAGE_SIZE, generator=gen) * 2.4
    images = patterns[labels].unsqueeze(1) * colours + noise
    return images, labels


class Net(nn.Module):
    """Two conv blocks and a linear head (no batch norm: per-rank statistics would make
    the result depend on the world size)."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        )
        self.head = nn.Linear(32 * 4 * 4, NUM_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).flatten(1))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    env = os.environ.get
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=int(env("TRAIN_STEPS", "300")))
    p.add_argument("--global-batch", type=int, default=int(env("TRAIN_GLOBAL_BATCH", "64")))
    p.add_argument("--ckpt-every", type=int, default=int(env("TRAIN_CKPT_EVERY", "10")))
    p.add_argument("--lr", type=float, default=float(env("TRAIN_LR", "0.02")))
    p.add_argument("--step-sleep", type=float, default=float(env("TRAIN_STEP_SLEEP", "0")),
                   help="seconds to sleep per step (lets tests interrupt a run mid-way)")
    p.add_argument("--dataset-size", type=int, default=2048)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-policy", choices=["keep_global", "linear_lr"],
                   default="keep_global")
    p.add_argument("--max-micro-batch", type=int, default=None)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--print-every", type=int, default=10)
    p.add_argument("--threads", type=int, default=1, help="torch threads per worker")
    p.add_argument("--pg-timeout", type=float, default=120.0)
    p.add_argument("--stop-after", type=int, default=None,
                   help="the last rank asks for a stop after this step, as SIGTERM would")
    return p.parse_args(argv)


def make_schedule(optimizer: torch.optim.Optimizer, args: argparse.Namespace) -> object:
    """Linear warm-up, then cosine decay to 10% over the whole run."""
    def factor(step: int) -> float:
        if step < args.warmup:
            return (step + 1) / args.warmup
        progress = min(1.0, (step - args.warmup) / max(1, args.steps - args.warmup))
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def train(args: argparse.Namespace) -> int:
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    if inprocess.selected():  # coord's default mode lets the script choose: in-process
        return train_inprocess(args)
    config = elastic.ElasticConfig(ckpt_every=args.ckpt_every, batch_policy=args.batch_policy,
                                   max_micro_batch=args.max_micro_batch, seed=args.seed,
                                   timeout_s=args.pg_timeout)
    with elastic.init(config) as ctx:
        started = time.monotonic()
        run(ctx, args)  # returns before close(): DDP must not outlive the process group
        return finish(ctx, time.monotonic() - started)


def run(ctx: elastic.ElasticContext, args: argparse.Namespace) -> None:
    """Restore, then train until the last step or an agreed stop."""
    images, labels = make_dataset(args.dataset_size, args.seed)
    images, labels = images.to(ctx.device), labels.to(ctx.device)
    model = Net().to(ctx.device)
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9)
    scheduler = make_schedule(optimizer, args)
    ctx.restore(model, optimizer, scheduler)
    ddp = DistributedDataParallel(model)
    progress = make_progress(ctx, scheduler, args.print_every)
    for step in ctx.loop(args.steps, args.dataset_size, args.global_batch, on_step=progress):
        for mb in step.micro(ddp):
            idx = mb.indices.to(ctx.device)
            step.backward(F.cross_entropy(ddp(images[idx]), labels[idx]), mb)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        if args.stop_after is not None and step.number >= args.stop_after \
                and ctx.rank == ctx.world_size - 1:
            ctx.request_stop("--stop-after")
        if args.step_sleep:
            time.sleep(args.step_sleep)


def train_inprocess(args: argparse.Namespace) -> int:
    """The same training with in-process recovery: the context steps the optimizer itself,
    only when every replica of the quorum may commit the step."""
    config = inprocess.InProcessConfig(ckpt_every=args.ckpt_every, seed=args.seed,
                                       max_micro_batch=args.max_micro_batch)
    images, labels = make_dataset(args.dataset_size, args.seed)
    with inprocess.init(config) as ctx:
        started = time.monotonic()
        model = Net().to(ctx.device)
        optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9)
        scheduler = make_schedule(optimizer, args)
        ctx.restore(model, optimizer, scheduler)
        images, labels = images.to(ctx.device), labels.to(ctx.device)
        progress = make_progress(ctx, scheduler, args.print_every)
        for step in ctx.loop(args.steps, args.dataset_size, args.global_batch, on_step=progress):
            for mb in step.micro(model):
                idx = mb.indices.to(ctx.device)
                step.backward(F.cross_entropy(model(images[idx]), labels[idx]), mb)
            if args.step_sleep:
                time.sleep(args.step_sleep)
        print(f"{'LEFT' if ctx.stopped else 'DONE'} step={ctx.state.step} "
              f"healed_from_peer={ctx.healed_from_peer} discarded={ctx.discarded} "
              f"reformations={len(ctx.reformations)}", flush=True)
        return finish(ctx, time.monotonic() - started)


def make_progress(ctx: elastic.ElasticContext, scheduler: object,
                  every: int) -> Callable[[elastic.TrainState], None]:
    """Rank 0 prints the global mean loss every `every` steps (called after each step)."""
    def progress(state: elastic.TrainState) -> None:
        if ctx.is_leader and state.step % every == 0:
            print(f"step={state.step} loss={state.last_loss:.4f} "
                  f"lr={scheduler.get_last_lr()[0]:.4f} world={ctx.world_size} "
                  f"gen={ctx.env.generation}", flush=True)
    return progress


def finish(ctx: elastic.ElasticContext, seconds: float) -> int:
    state = ctx.state
    if ctx.stopped:
        print(f"STOPPED step={state.step} rank={ctx.rank} generation={ctx.env.generation}",
              flush=True)
    elif ctx.is_leader:
        loss = "nan" if state.last_loss is None else f"{state.last_loss:.4f}"
        print(f"FINAL loss={loss} steps={state.step} samples={state.samples_seen} "
              f"seconds={seconds:.1f}", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return train(args)
    except elastic.ElasticError as exc:
        print(f"elastic error ({type(exc).__name__}): {exc}", file=sys.stderr, flush=True)
        code = exc.exit_code
    gc.collect()  # free a DDP module held by the traceback while the interpreter is whole
    return code


if __name__ == "__main__":
    sys.exit(main())
