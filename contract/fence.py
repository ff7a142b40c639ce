"""The generation fence: a file in the job's checkpoint directory holding the newest
generation started and the job that started it ("GEN JOB_ID"). The agent writes it before it
starts a generation's workers; the elastic trainer reads it right before each commit and
refuses when its generation is older or its job is not the owner, so a node that wakes up
after it was removed cannot overwrite anything. A new job that reuses the directory (to resume
from another job's checkpoints) takes it over, starting again from its own generation."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import NamedTuple

FENCE_FILE = "FENCE"


class Fence(NamedTuple):
    generation: int
    job_id: str  # "" in a fence written without one (older agents, tests)


class UnreadableFence(ValueError):
    """The FENCE file exists but does not hold 'GENERATION JOB_ID'."""


def read_fence(ckpt_dir: Path) -> Fence | None:
    """The fence, or None when no fence has been written yet."""
    try:
        raw = (ckpt_dir / FENCE_FILE).read_text().strip()
    except FileNotFoundError:
        return None
    words = raw.split()
    try:
        return Fence(int(words[0]), words[1] if len(words) > 1 else "")
    except (ValueError, IndexError) as exc:
        raise UnreadableFence(f"{ckpt_dir / FENCE_FILE} holds {raw!r}, not "
                              "'GENERATION JOB_ID'") from exc


def write_fence(ckpt_dir: Path, generation: int, job_id: str) -> None:
    """Raise the job's fence to `generation` (never lower it), atomically. The writer is the
    authority: an unreadable fence is replaced (a reader refuses it instead)."""
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    try:
        fence = read_fence(ckpt_dir)
    except UnreadableFence:
        fence = None
    if fence is not None and fence.job_id == job_id and fence.generation >= generation:
        return
    fd, tmp = tempfile.mkstemp(dir=ckpt_dir, prefix=".fence-")
    with os.fdopen(fd, "w") as handle:
        handle.write(f"{generation} {job_id}\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, ckpt_dir / FENCE_FILE)
