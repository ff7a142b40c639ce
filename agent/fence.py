"""The generation fence: a file in the job's checkpoint directory holding the newest
generation started. The elastic trainer refuses to commit when its generation is older, so a
node that wakes up after it was removed cannot overwrite anything."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

FENCE_NAME = "FENCE"


def read_fence(ckpt_dir: Path) -> int:
    try:
        return int((ckpt_dir / FENCE_NAME).read_text().strip() or 0)
    except (FileNotFoundError, ValueError):
        return 0


def write_fence(ckpt_dir: Path, generation: int) -> None:
    """Raise the fence to `generation` (never lower it), atomically."""
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    if read_fence(ckpt_dir) >= generation:
        return
    fd, tmp = tempfile.mkstemp(dir=ckpt_dir, prefix=".fence-")
    with os.fdopen(fd, "w") as handle:
        handle.write(f"{generation}\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, ckpt_dir / FENCE_NAME)
