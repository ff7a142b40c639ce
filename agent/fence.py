"""The generation fence: a file in the job's checkpoint directory holding the newest
generation started and the job that started it ("GEN JOB_ID"). The elastic trainer refuses to
commit when its generation is older or its job is not the owner, so a node that wakes up after
it was removed cannot overwrite anything. A new job that reuses the directory (to resume from
another job's checkpoints) takes it over, starting again from its own generation."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

FENCE_NAME = "FENCE"


def read_fence(ckpt_dir: Path) -> tuple[int, str]:
    """(generation, owning job id); (0, "") when there is no readable fence."""
    try:
        words = (ckpt_dir / FENCE_NAME).read_text().split()
        return int(words[0]), (words[1] if len(words) > 1 else "")
    except (FileNotFoundError, ValueError, IndexError):
        return 0, ""


def write_fence(ckpt_dir: Path, generation: int, job_id: str) -> None:
    """Raise the job's fence to `generation` (never lower it), atomically."""
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    fenced, owner = read_fence(ckpt_dir)
    if owner == job_id and fenced >= generation:
        return
    fd, tmp = tempfile.mkstemp(dir=ckpt_dir, prefix=".fence-")
    with os.fdopen(fd, "w") as handle:
        handle.write(f"{generation} {job_id}\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, ckpt_dir / FENCE_NAME)
