"""Generation fencing through the `FENCE` file in the shared checkpoint directory.

Before it starts generation g+1 the coordinator atomically writes "g+1 JOB_ID" to `FENCE`. A
worker of generation g reads it right before each commit's final rename and refuses when the
fenced generation is newer or another job owns the directory now, so a worker that was
partitioned away, paused or slow to die cannot replace newer state.

The check and the rename are two system calls, not one: a writer that passed the check just
before FENCE changed can still complete that one rename. The coordinator's SIGTERM/SIGKILL of
the old generation before it starts the new one keeps that window to a commit already in flight.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

from .errors import FenceFileError, StaleGenerationError

FENCE_FILE = "FENCE"


class Fence(NamedTuple):
    generation: int
    job_id: str  # "" in a fence written without one (older agents, tests)


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
        raise FenceFileError(f"{ckpt_dir / FENCE_FILE} holds {raw!r}, not 'GENERATION JOB_ID'"
                             ) from exc


def ensure_current(ckpt_dir: Path, generation: int, job_id: str = "") -> None:
    """Raise StaleGenerationError if the coordinator has moved past `generation`, or if another
    job has taken the directory over since."""
    fence = read_fence(ckpt_dir)
    if fence is None:
        return
    if fence.job_id and job_id and fence.job_id != job_id:
        raise StaleGenerationError(generation, fence.generation, owner=fence.job_id)
    if fence.generation > generation:
        raise StaleGenerationError(generation, fence.generation)
