"""Generation fencing through the `FENCE` file in the shared checkpoint directory.

Before it starts generation g+1 the coordinator atomically writes g+1 to `FENCE`. A worker of
generation g reads it right before each commit's final rename and refuses when FENCE > g, so a
worker that was partitioned away, paused or slow to die cannot replace newer state.

The check and the rename are two system calls, not one: a writer that passed the check just
before FENCE changed can still complete that one rename. The coordinator's SIGTERM/SIGKILL of
the old generation before it starts the new one keeps that window to a commit already in flight.
"""

from __future__ import annotations

from pathlib import Path

from .errors import FenceFileError, StaleGenerationError

FENCE_FILE = "FENCE"


def read_fence(ckpt_dir: Path) -> int | None:
    """The fenced generation, or None when no fence has been written yet."""
    try:
        raw = (ckpt_dir / FENCE_FILE).read_text().strip()
    except FileNotFoundError:
        return None
    try:
        return int(raw)
    except ValueError as exc:
        raise FenceFileError(f"{ckpt_dir / FENCE_FILE} holds {raw!r}, not an integer") from exc


def ensure_current(ckpt_dir: Path, generation: int) -> None:
    """Raise StaleGenerationError if the coordinator has moved past `generation`."""
    fence = read_fence(ckpt_dir)
    if fence is not None and fence > generation:
        raise StaleGenerationError(generation, fence)
