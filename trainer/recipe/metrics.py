"""Results of a run: per-epoch train loss, images/s, validation top-1/top-5, TensorBoard event
files, and a final JSON summary in the DAWNBench manner (wall time, epochs, final accuracy,
time to the target accuracy).

The running totals live in the elastic `TrainState.extra`, which every checkpoint carries, so
an epoch split across generations (and the clock of the whole job) continue after a resume.
The library commits step s before the step's callback runs, so a restored state lacks the
last step's loss; `RunMetrics.restored` adds it back from `state.last_loss`.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any

import torch

from trainer import elastic

from .config import TargetConfig
from .logs import get_logger

log = get_logger(__name__)
KEY = "metrics"


def topk_correct(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """[top-1 correct, top-5 correct, count] of one batch, as float64 on the CPU."""
    k = min(5, logits.shape[1])
    top = logits.float().topk(k, dim=1).indices.cpu()
    hits = top.eq(labels.view(-1, 1))
    return torch.tensor([hits[:, 0].sum().item(), hits.any(dim=1).sum().item(),
                         labels.numel()], dtype=torch.float64)


def _fresh(now: float) -> dict[str, Any]:
    return {"started_at": now, "train_seconds": 0.0, "through_step": 0, "through_samples": 0,
            "epoch": {"loss_sum": 0.0, "steps": 0, "images": 0, "seconds": 0.0},
            "epochs_done": 0, "val_at_samples": -1, "history": [],
            "time_to_target_s": None, "target_epoch": None, "generations": []}


class RunMetrics:
    """Accumulates step results into epochs; rank 0 writes TensorBoard and the summary."""

    def __init__(self, state: elastic.TrainState, dataset_size: int, out_dir: Path,
                 leader: bool, target: TargetConfig | None) -> None:
        self.state = state
        self.dataset_size = dataset_size
        self.out_dir = out_dir
        self.leader = leader
        self.target = target
        self.data: dict[str, Any] = state.extra.setdefault(KEY, _fresh(time.time()))
        self._writer = None

    # -- steps ---------------------------------------------------------------------------

    def restored(self, generation: int, world_size: int) -> None:
        """Count the restored step the checkpoint's totals do not yet include."""
        if self.state.step > self.data["through_step"] and self.state.last_loss is not None:
            images = self.state.samples_seen - self.data["through_samples"]
            self.record_step(self.state.last_loss, images, 0.0)
        self.data["generations"].append({"generation": generation, "world_size": world_size,
                                         "step": self.state.step,
                                         "samples": self.state.samples_seen})

    def record_step(self, loss: float | None, images: int, seconds: float) -> None:
        epoch = self.data["epoch"]
        if loss is not None and math.isfinite(loss):
            epoch["loss_sum"] += loss
            epoch["steps"] += 1
        epoch["images"] += images
        epoch["seconds"] += seconds
        self.data["train_seconds"] += seconds
        self.data["through_step"] = self.state.step
        self.data["through_samples"] = self.state.samples_seen

    def epochs_due(self) -> int:
        """Whole epochs completed but not yet closed (validated and reported)."""
        return self.state.samples_seen // self.dataset_size - self.data["epochs_done"]

    def validated_here(self) -> bool:
        return self.data["val_at_samples"] == self.state.samples_seen

    # -- epochs --------------------------------------------------------------------------

    def close_epoch(self, top1: float, top5: float, lr: float) -> dict[str, Any]:
        """Turn the running totals into one history row; returns it."""
        epoch = self.data["epoch"]
        wall = time.time() - self.data["started_at"]
        row = {
            "epoch": round(self.state.samples_seen / self.dataset_size, 4),
            "step": self.state.step,
            "train_loss": epoch["loss_sum"] / epoch["steps"] if epoch["steps"] else None,
            "images_per_s": epoch["images"] / epoch["seconds"] if epoch["seconds"] else None,
            "top1": top1, "top5": top5, "lr": lr, "wall_s": wall,
        }
        self.data["history"].append(row)
        self.data["epochs_done"] = self.state.samples_seen // self.dataset_size
        self.data["val_at_samples"] = self.state.samples_seen
        self.data["epoch"] = {"loss_sum": 0.0, "steps": 0, "images": 0, "seconds": 0.0}
        self._check_target(row)
        if self.leader:
            self._write_epoch(row)
        return row

    def _check_target(self, row: dict[str, Any]) -> None:
        if self.target is None or self.data["time_to_target_s"] is not None:
            return
        if row[self.target.metric] >= self.target.accuracy:
            self.data["time_to_target_s"] = row["wall_s"]
            self.data["target_epoch"] = row["epoch"]

    def _write_epoch(self, row: dict[str, Any]) -> None:
        writer = self._tensorboard()
        if writer is None:
            return
        step = self.state.samples_seen
        for key in ("train_loss", "images_per_s", "top1", "top5", "lr"):
            if row[key] is not None:
                writer.add_scalar(f"epoch/{key}", row[key], step)
        writer.add_scalar("epoch/epoch", row["epoch"], step)
        writer.flush()

    def log_step(self, loss: float, lr: float) -> None:
        writer = self._tensorboard() if self.leader else None
        if writer is not None:
            writer.add_scalar("train/loss", loss, self.state.samples_seen)
            writer.add_scalar("train/lr", lr, self.state.samples_seen)

    def _tensorboard(self) -> Any:
        """A SummaryWriter, created on first use (rank 0 only); None without tensorboard."""
        if self._writer is None:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as exc:  # results still go to summary.json and the log
                log.warning("tensorboard_unavailable", error=str(exc),
                            fix="pip install tensorboard")
                self._writer = False
            else:
                self._writer = SummaryWriter(log_dir=str(self.out_dir / "tensorboard"))
        return self._writer or None

    def close(self) -> None:
        if self._writer:
            self._writer.close()
        self._writer = None

    # -- the end -------------------------------------------------------------------------

    def summary(self, recipe: dict[str, Any]) -> dict[str, Any]:
        """The DAWNBench-style result of the whole job (all generations)."""
        history = self.data["history"]
        last = history[-1] if history else {}
        return {
            "wall_time_s": time.time() - self.data["started_at"],
            "train_time_s": self.data["train_seconds"],
            "epochs": self.state.samples_seen / self.dataset_size,
            "steps": self.state.step,
            "samples": self.state.samples_seen,
            "final_top1": last.get("top1"),
            "final_top5": last.get("top5"),
            "target": None if self.target is None else self.target.model_dump(),
            "time_to_target_s": self.data["time_to_target_s"],
            "target_epoch": self.data["target_epoch"],
            "generations": self.data["generations"],
            "history": history,
            "recipe": recipe,
        }

    def write_summary(self, summary: dict[str, Any]) -> Path:
        """Atomically write `summary.json` into the output directory."""
        self.out_dir.mkdir(parents=True, exist_ok=True)
        path = self.out_dir / "summary.json"
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps(summary, indent=2) + "\n")
        os.replace(tmp, path)
        return path
