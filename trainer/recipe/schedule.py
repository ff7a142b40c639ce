"""The learning rate as a pure function of samples seen.

lr(samples) = lr * (phase global batch / base_batch) * phase lr_scale * shape(epoch), where
epoch = samples / dataset size (fractional) and shape is a linear warm-up from `warmup_start`
to 1 over `warmup_epochs`, then a linear or cosine decay to `final_factor` at the last epoch.

Not a function of the step count: steps change meaning when the global batch changes between
phases, and a resumed job at another world size counts steps differently. Samples seen is the
one position every generation agrees on, so the curve continues exactly after any re-forming.
"""

from __future__ import annotations

import math

import torch

from .config import OptimizerConfig, ScheduleConfig
from .phases import PhasePlan


def shape(epoch: float, total_epochs: float, cfg: ScheduleConfig) -> float:
    """Multiplier of the peak LR at a fractional epoch: warm-up, then decay."""
    if epoch < cfg.warmup_epochs:
        return cfg.warmup_start + (1.0 - cfg.warmup_start) * epoch / cfg.warmup_epochs
    span = max(total_epochs - cfg.warmup_epochs, 1e-12)
    progress = min(1.0, (epoch - cfg.warmup_epochs) / span)
    if cfg.decay == "cosine":
        return cfg.final_factor + (1.0 - cfg.final_factor) * 0.5 * (1 + math.cos(math.pi * progress))
    return 1.0 - (1.0 - cfg.final_factor) * progress


class LRSchedule:
    """lr(samples_seen) for one recipe and data set size."""

    def __init__(self, optimizer_cfg: OptimizerConfig, schedule_cfg: ScheduleConfig,
                 plan: PhasePlan) -> None:
        self.opt = optimizer_cfg
        self.cfg = schedule_cfg
        self.plan = plan
        self.total_epochs = plan.total_samples / plan.dataset_size

    def peak(self, samples_seen: int) -> float:
        """The batch-scaled peak of the phase `samples_seen` falls in (linear scaling rule)."""
        phase = self.plan.at(samples_seen).phase
        return self.opt.lr * phase.global_batch / self.opt.base_batch * phase.lr_scale

    def lr(self, samples_seen: int) -> float:
        epoch = self.plan.epoch(samples_seen)
        return self.peak(samples_seen) * shape(epoch, self.total_epochs, self.cfg)

    def apply(self, optimizer: torch.optim.Optimizer, samples_seen: int) -> float:
        """Set every parameter group's LR for the step that starts at `samples_seen`."""
        value = self.lr(samples_seen)
        for group in optimizer.param_groups:
            group["lr"] = value
        return value
