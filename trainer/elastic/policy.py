"""What happens to batch size and learning rate when the world size changes.

`keep_global` (default): the global batch stays fixed; each worker takes global / world
samples (uneven shares and gradient accumulation keep it exact), so the optimisation is the
same at any world size. `linear_lr`: each worker keeps the per-worker batch it had at the
reference world size, the global batch grows or shrinks with the world, and the learning rate
is scaled by the same factor (the linear scaling rule).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch

BatchPolicyName = Literal["keep_global", "linear_lr"]
BATCH_POLICIES: tuple[str, ...] = ("keep_global", "linear_lr")


@dataclass(frozen=True)
class BatchPlan:
    """The global batch of a step at this world size, and the LR factor relative to base."""

    global_batch: int
    lr_scale: float


def plan_batch(policy: BatchPolicyName, global_batch: int, world_size: int,
               reference_world_size: int) -> BatchPlan:
    """Resolve `policy` for the current world; `global_batch` is the one at the reference."""
    if policy == "keep_global":
        return BatchPlan(global_batch, 1.0)
    if policy == "linear_lr":
        scaled = max(world_size, round(global_batch * world_size / reference_world_size))
        return BatchPlan(scaled, scaled / global_batch)
    raise ValueError(f"batch_policy must be one of {BATCH_POLICIES}, got {policy!r}")


def rescale_lr(optimizer: torch.optim.Optimizer | None, scheduler: Any | None,
               factor: float) -> None:
    """Multiply the current and base learning rates by `factor`.

    The scheduler's `base_lrs` are scaled too, or a LambdaLR-style scheduler would undo the
    change at its next step.
    """
    if optimizer is None or factor == 1.0:
        return
    for group in optimizer.param_groups:
        group["lr"] = group["lr"] * factor
        if "initial_lr" in group:
            group["initial_lr"] = group["initial_lr"] * factor
    base_lrs = getattr(scheduler, "base_lrs", None)
    if base_lrs is not None:
        scheduler.base_lrs = [lr * factor for lr in base_lrs]
    last_lr = getattr(scheduler, "_last_lr", None)
    if last_lr is not None:
        scheduler._last_lr = [lr * factor for lr in last_lr]
