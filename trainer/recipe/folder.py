"""An ImageFolder directory as a sample index, and each rank's slice of the sample stream.

The index is sorted (classes, then files), so every rank of every generation numbers samples
the same way. What a rank reads is cut from the elastic library's global sample stream: the
step that starts at position p takes stream[p : p + B] and this rank its share of it. Reading
files in exactly that order makes the data position a function of samples seen only: after a
resume at another world size the epoch continues from the next unread sample.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from trainer import elastic

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


class ImageFolderError(FileNotFoundError):
    """A data directory that is missing or holds no `<class>/<image>` files."""


@dataclass(frozen=True)
class FolderIndex:
    """Files and class labels of `root/<class>/<file>`, in sorted order."""

    root: Path
    classes: tuple[str, ...]
    files: tuple[str, ...]
    labels: np.ndarray  # int64 class index per file

    @classmethod
    def scan(cls, root: str | Path) -> FolderIndex:
        root = Path(root)
        if not root.is_dir():
            raise ImageFolderError(f"image folder {root} does not exist (expected "
                                   f"{root}/<class>/<image>.jpg)")
        classes = tuple(sorted(p.name for p in root.iterdir() if p.is_dir()))
        files: list[str] = []
        labels: list[int] = []
        for label, name in enumerate(classes):
            found = sorted(p for p in (root / name).iterdir()
                           if p.suffix.lower() in IMAGE_SUFFIXES)
            files.extend(str(p) for p in found)
            labels.extend([label] * len(found))
        if not files:
            raise ImageFolderError(f"no images under {root}/<class>/ "
                                   f"(looked for {', '.join(IMAGE_SUFFIXES)})")
        return cls(root, classes, tuple(files), np.asarray(labels, dtype=np.int64))

    def __len__(self) -> int:
        return len(self.files)


def rank_indices(sampler: elastic.GlobalSampler, position: int, global_batch: int,
                 world_size: int, rank: int, steps: int) -> np.ndarray:
    """Dataset indices this rank reads for `steps` steps starting at sample `position`,
    in reading order (the same split the elastic loop hands the rank)."""
    parts = []
    for k in range(steps):
        micro = elastic.plan_micro_batches(sampler, position + k * global_batch, global_batch,
                                           world_size, rank)
        parts.extend(mb.indices.numpy() for mb in micro)
    return np.concatenate(parts) if parts else np.empty(0, dtype=np.int64)


def share_size(global_batch: int, world_size: int, rank: int) -> int:
    """How many samples of each global batch this rank gets (fixed for a phase)."""
    base, extra = divmod(global_batch, world_size)
    return base + (1 if rank < extra else 0)


def val_shard(count: int, world_size: int, rank: int) -> range:
    """A contiguous, disjoint slice of the validation set per rank; together they cover it."""
    base, extra = divmod(count, world_size)
    start = rank * base + min(rank, extra)
    return range(start, start + base + (1 if rank < extra else 0))
