"""Generation fencing through the `FENCE` file in the shared checkpoint directory
(contract/fence.py: its format, its one reader and writer).

Before it starts generation g+1 the agent atomically writes "g+1 JOB_ID" to `FENCE`. A worker of
generation g reads it right before each commit's final rename and refuses when the fenced
generation is newer or another job owns the directory now, so a worker that was partitioned
away, paused or slow to die cannot replace newer state.

The check and the rename are two system calls, not one: a writer that passed the check just
before FENCE changed can still complete that one rename. The coordinator's SIGTERM/SIGKILL of
the old generation before it starts the new one keeps that window to a commit already in flight.
"""

from __future__ import annotations

from pathlib import Path

from contract.fence import UnreadableFence, read_fence

from .errors import FenceFileError, StaleGenerationError


def ensure_current(ckpt_dir: Path, generation: int, job_id: str = "") -> None:
    """Raise StaleGenerationError if the coordinator has moved past `generation`, or if another
    job has taken the directory over since; FenceFileError when the fence cannot be read
    (refuse rather than guess)."""
    try:
        fence = read_fence(ckpt_dir)
    except UnreadableFence as exc:
        raise FenceFileError(str(exc)) from exc
    if fence is None:
        return
    if fence.job_id and job_id and fence.job_id != job_id:
        raise StaleGenerationError(generation, fence.generation, owner=fence.job_id)
    if fence.generation > generation:
        raise StaleGenerationError(generation, fence.generation)
