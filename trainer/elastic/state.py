"""What a checkpoint holds: the training position plus model, optimizer and scheduler state.

The position is counted in steps and in samples seen (not in per-rank batches), so it means
the same thing at any world size.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import torch

from . import rng

FORMAT_VERSION = 1


@dataclass
class TrainState:
    """The training position; `extra` is free for the script's own small values."""

    step: int = 0
    samples_seen: int = 0
    generation: int = 0
    world_size: int = 1
    data_seed: int = 0
    lr_scale: float = 1.0
    reference_world_size: int | None = None
    last_loss: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainState:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The bare module under DistributedDataParallel (or similar wrappers with `.module`)."""
    inner = getattr(model, "module", None)
    return inner if isinstance(inner, torch.nn.Module) else model


def build_payload(state: TrainState, model: torch.nn.Module,
                  optimizer: torch.optim.Optimizer | None,
                  scheduler: Any | None) -> dict[str, Any]:
    """Everything needed to continue exactly where this step ended."""
    return {
        "format": FORMAT_VERSION,
        "train": state.to_dict(),
        "model": unwrap(model).state_dict(),
        "optimizer": None if optimizer is None else optimizer.state_dict(),
        "scheduler": None if scheduler is None else scheduler.state_dict(),
        "rng": rng.capture(),
    }


def apply_payload(payload: dict[str, Any], model: torch.nn.Module,
                  optimizer: torch.optim.Optimizer | None,
                  scheduler: Any | None) -> TrainState:
    """Load a payload into live objects and return its training position."""
    unwrap(model).load_state_dict(payload["model"])
    if optimizer is not None and payload.get("optimizer") is not None:
        optimizer.load_state_dict(payload["optimizer"])
    if scheduler is not None and payload.get("scheduler") is not None:
        scheduler.load_state_dict(payload["scheduler"])
    rng.restore(payload.get("rng", {}))
    return TrainState.from_dict(payload["train"])
