"""The fast trainer: ResNet-18/50 with the "ImageNet in 18 minutes" recipe, elastic under coord.

Progressive resizing from a phase table, large batches with the learning rate scaled to them,
Nesterov SGD, label smoothing, warm-up then decay, NVIDIA DALI pipelines (CPU operators without
a GPU, `mixed` JPEG decoding with one), bf16 autocast and channels_last on GPUs. As a coord
worker it joins the group coord's environment describes (RANK, WORLD_SIZE, MASTER_ADDR, ...),
restores the newest committed state, and on SIGTERM stops at a step all ranks agree on; the
next generation continues the same curve at any world size (LR, phase and epoch are functions
of samples seen). Run by hand (no RANK) it is one process that keeps its state in ./checkpoints
and resumes from it.

quick start (CPU, about a minute):
  python -m trainer.datasets digits data/digits       # sklearn's digits as JPEGs
  python -m trainer.train --config digits_cpu --show  # the resolved recipe and phase table
  python -m trainer.train --config digits_cpu --train-dir data/digits/train \\
      --val-dir data/digits/val
  coord submit examples/imagenet/job.toml             # the same on 3 local nodes

the recipe (TOML; --set KEY=VALUE overrides any key, the value in TOML syntax):
  [model]      arch = "resnet18" | "resnet50", num_classes, width, stem
  [data]       train_dir, val_dir (ImageFolder: DIR/<class>/<image>.jpg), threads,
               min_scale, flip, val_batch, val_crop_fraction, mean, std
  [optimizer]  lr (peak per base_batch images), base_batch, momentum, nesterov,
               weight_decay (never on BatchNorm or biases), label_smoothing
  [schedule]   warmup_epochs, warmup_start, decay = "linear" | "cosine", final_factor
  [[phases]]   epochs = [start, end], size, global_batch, lr_scale, val_size, rect_val
               one row per phase; rows tile the run from epoch 0. Peak LR of a phase:
               lr * global_batch / base_batch * lr_scale.
  [target]     metric = "top1" | "top5", accuracy (time to it goes in the summary)
  [run]        seed, ckpt_every, snapshot_every, log_every, torch_threads, pg_timeout_s

results (--out, default $COORD_CHECKPOINT_DIR/run): summary.json (wall time, epochs, final
top-1/top-5, time to target, per-epoch history) and tensorboard/ (event files).
exit codes: 0 finished or stopped for a resume, 1 other failures, 2 bad recipe, data or
environment, 3 fenced off (a stale generation), 4 a commit failed.
"""

from __future__ import annotations

import argparse
import gc
import sys
from pathlib import Path

import torch

from trainer import elastic
from trainer.recipe import logs
from trainer.recipe.config import CONFIG_DIR, ConfigError, RecipeConfig, load_config

log = logs.get_logger(__name__)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    summary, details = __doc__.split("\n\n", 1)
    bundled = ", ".join(sorted(p.stem for p in CONFIG_DIR.glob("*.toml")))
    p = argparse.ArgumentParser(prog="python -m trainer.train", description=summary,
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=details)
    p.add_argument("--config", required=True, metavar="RECIPE",
                   help=f"recipe TOML path, or a bundled name: {bundled}")
    p.add_argument("--set", dest="overrides", action="append", default=[],
                   metavar="KEY=VALUE",
                   help="override a recipe key, e.g. optimizer.lr=0.2 (repeatable)")
    p.add_argument("--train-dir", help="ImageFolder training directory (data.train_dir)")
    p.add_argument("--val-dir", help="ImageFolder validation directory (data.val_dir)")
    p.add_argument("--out", type=Path,
                   help="results directory (default: $COORD_CHECKPOINT_DIR/run)")
    p.add_argument("--sample-trace", type=Path, metavar="DIR",
                   help="write every step's sample ids and LR here (audits, tests)")
    p.add_argument("--show", action="store_true",
                   help="print the resolved recipe and its phase table, then exit")
    return p.parse_args(argv)


def recipe_from_args(args: argparse.Namespace) -> RecipeConfig:
    """The recipe file with --set overrides and the data-directory flags applied."""
    overrides = list(args.overrides)
    if args.train_dir:
        overrides.append(f"data.train_dir={_toml_string(args.train_dir)}")
    if args.val_dir:
        overrides.append(f"data.val_dir={_toml_string(args.val_dir)}")
    return load_config(args.config, overrides)


def _toml_string(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def show(cfg: RecipeConfig) -> None:
    """The recipe as the trainer will run it, phase table first."""
    opt = cfg.optimizer
    print(f"{'phase':>5} {'epochs':>13} {'size':>5} {'val':>9} {'global_batch':>12} "
          f"{'peak_lr':>8}")
    for i, ph in enumerate(cfg.phases):
        peak = opt.lr * ph.global_batch / opt.base_batch * ph.lr_scale
        val = f"{ph.eval_size}{' rect' if ph.rect_val else ''}"
        print(f"{i:>5} {ph.epochs[0]:>6g}-{ph.epochs[1]:<6g} {ph.size:>5} {val:>9} "
              f"{ph.global_batch:>12} {peak:>8.4g}")
    print(cfg.model_dump_json(indent=2))


def elastic_config(cfg: RecipeConfig) -> elastic.ElasticConfig:
    return elastic.ElasticConfig(ckpt_every=cfg.run.ckpt_every,
                                 snapshot_every=cfg.run.snapshot_every, seed=cfg.run.seed,
                                 timeout_s=cfg.run.pg_timeout_s)


def train(cfg: RecipeConfig, args: argparse.Namespace) -> int:
    """Check the data, join the group, train what is left, leave (DDP gone before the group)."""
    from trainer.recipe.data import require_dali
    from trainer.recipe.engine import Paths, Trainer
    from trainer.recipe.folder import FolderIndex

    require_dali()
    indexes = FolderIndex.scan(cfg.data.train_dir), FolderIndex.scan(cfg.data.val_dir)
    if cfg.run.torch_threads:
        torch.set_num_threads(cfg.run.torch_threads)
    torch.manual_seed(cfg.run.seed)
    with elastic.init(elastic_config(cfg)) as ctx:
        paths = Paths(args.out or ctx.env.checkpoint_dir / "run", args.sample_trace)
        trainer = Trainer(ctx, cfg, paths, *indexes)
        trainer.fit()
        stopped = ctx.stopped
        del trainer
        gc.collect()
    if stopped:
        log.info("stopped_for_resume", rank=ctx.rank, step=ctx.state.step,
                 samples=ctx.state.samples_seen)
    return 0


def main(argv: list[str] | None = None) -> int:
    from trainer.recipe.data import DaliMissingError
    from trainer.recipe.folder import ImageFolderError

    args = parse_args(argv)
    logs.configure()
    try:
        cfg = recipe_from_args(args)
        if args.show:
            show(cfg)
            return 0
        return train(cfg, args)
    except (ConfigError, ImageFolderError, DaliMissingError) as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 2
    except elastic.ElasticError as exc:
        log.error("elastic_error", kind=type(exc).__name__, error=str(exc))
        code = exc.exit_code
    gc.collect()  # free a DDP module held by the traceback while the interpreter is whole
    return code


if __name__ == "__main__":
    sys.exit(main())
