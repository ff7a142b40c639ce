"""A deterministic global sample stream, cut into per-rank micro-batches.

The stream is the concatenation of one permutation per epoch, each drawn from (seed, epoch).
The global batch of a step at position p (samples seen so far) is stream[p : p + B], split
into contiguous per-rank shares. Which samples a step consumes therefore depends only on
(seed, p, B), never on the world size, so a job resumed on a different number of workers
continues from exactly the same sample.

Shares differ by at most one sample when B is not divisible by the world size. Each
micro-batch carries the weight that makes the DDP-averaged gradient equal the gradient of the
mean loss over the whole global batch, so uneven shares and gradient accumulation give the
same update as one big batch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

_EPOCH_STRIDE = 1_000_003  # keeps (seed, epoch) pairs apart when folded into one seed


@dataclass(frozen=True)
class MicroBatch:
    """Dataset indices for one forward/backward pass and its loss weight.

    `weight` = len(indices) * world_size / global_batch: multiply the micro-batch's *mean*
    loss by it before backward (DDP divides gradients by world_size).
    """

    indices: torch.Tensor
    weight: float

    def __len__(self) -> int:
        return int(self.indices.numel())


class GlobalSampler:
    """The infinite, epoch-by-epoch permuted stream over `dataset_size` samples."""

    def __init__(self, dataset_size: int, seed: int) -> None:
        if dataset_size < 1:
            raise ValueError("dataset_size must be >= 1")
        self.dataset_size = dataset_size
        self.seed = seed
        self._cached: tuple[int, torch.Tensor] | None = None

    def permutation(self, epoch: int) -> torch.Tensor:
        """The order of epoch `epoch`: a pure function of (seed, epoch)."""
        if self._cached is None or self._cached[0] != epoch:
            gen = torch.Generator().manual_seed(self.seed * _EPOCH_STRIDE + epoch)
            self._cached = (epoch, torch.randperm(self.dataset_size, generator=gen))
        return self._cached[1]

    def take(self, position: int, count: int) -> torch.Tensor:
        """stream[position : position + count], crossing epoch boundaries as needed."""
        parts = []
        while count > 0:
            epoch, offset = divmod(position, self.dataset_size)
            chunk = self.permutation(epoch)[offset: offset + count]
            parts.append(chunk)
            position += len(chunk)
            count -= len(chunk)
        return torch.cat(parts) if parts else torch.empty(0, dtype=torch.int64)


def rank_share(count: int, world_size: int, rank: int) -> tuple[int, int]:
    """[start, stop) of `rank`'s contiguous share; the first count % world ranks get one more."""
    base, extra = divmod(count, world_size)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


def split_even(indices: torch.Tensor, parts: int) -> list[torch.Tensor]:
    """Split into `parts` contiguous pieces whose sizes differ by at most one."""
    return [indices[slice(*rank_share(len(indices), parts, i))] for i in range(parts)]


def plan_micro_batches(sampler: GlobalSampler, position: int, global_batch: int,
                       world_size: int, rank: int,
                       max_micro_batch: int | None = None) -> list[MicroBatch]:
    """This rank's micro-batches for the global batch that starts at `position`."""
    if global_batch < world_size:
        raise ValueError(f"global batch {global_batch} is smaller than the world size "
                         f"{world_size}: some ranks would get no samples")
    batch = sampler.take(position, global_batch)
    start, stop = rank_share(global_batch, world_size, rank)
    share = batch[start:stop]
    micro_count = 1 if not max_micro_batch else math.ceil(len(share) / max_micro_batch)
    return [MicroBatch(part, len(part) * world_size / global_batch)
            for part in split_even(share, micro_count)]
