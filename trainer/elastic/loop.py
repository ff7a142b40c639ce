"""One training step as the script sees it: its micro-batches, backward and loss bookkeeping."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch

from .sampler import MicroBatch


@dataclass
class Step:
    """Step `number` (1-based) of the job; `micro_batches` are this rank's share of it."""

    number: int
    micro_batches: list[MicroBatch]
    global_batch: int
    loss_contribution: float = field(default=0.0)

    @property
    def indices(self) -> torch.Tensor:
        """All dataset indices this rank processes in this step."""
        return torch.cat([mb.indices for mb in self.micro_batches])

    def micro(self, model: torch.nn.Module) -> Iterator[MicroBatch]:
        """Iterate micro-batches; gradients are synchronised only on the last one.

        With DDP, every micro-batch but the last runs under `model.no_sync()` so gradient
        accumulation costs one all-reduce per step. Consume the iterator fully.
        """
        last = len(self.micro_batches) - 1
        for i, mb in enumerate(self.micro_batches):
            no_sync = getattr(model, "no_sync", None)
            guard = no_sync() if (i < last and no_sync is not None) else contextlib.nullcontext()
            with guard:
                yield mb

    def backward(self, loss: torch.Tensor, micro: MicroBatch) -> None:
        """Backward of a micro-batch's *mean* loss, weighted so the update is exact."""
        (loss * micro.weight).backward()
        self.record_loss(float(loss.detach()), len(micro))

    def record_loss(self, mean_loss: float, count: int) -> None:
        """For scripts that do their own backward: add `count` samples' mean loss."""
        self.loss_contribution += mean_loss * count / self.global_batch
