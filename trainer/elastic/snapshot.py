"""In-memory snapshots: after every step each node keeps its replica's full state in
node-local memory (/dev/shm), written by a background thread so training never waits.

When a machine dies without notice, the next generation resumes from the newest snapshot
any survivor holds, sent from that peer over the process group, so only the step in flight
is lost instead of everything since the last durable checkpoint. A snapshot of step s is taken
only after step s's collectives completed on that rank, which means every rank contributed to
it: the newest snapshot among survivors is always a state on the job's lineage.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import torch

from .checkpoint import Checkpoint, CheckpointStore
from .logs import get_logger

log = get_logger(__name__)


def detached_copy(value: Any) -> Any:
    """A CPU copy of every tensor in a nested payload, so the next step can change the live
    ones while the copy is written."""
    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu", copy=True)
    if isinstance(value, dict):
        return {k: detached_copy(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(detached_copy(v) for v in value)
    return value


class SnapshotStore:
    """Newest-two snapshots in a node-local directory, written off the training thread."""

    def __init__(self, directory: Path, generation: int, every: int, job_id: str = "",
                 report: bool = False) -> None:
        self.every = every
        self.store = CheckpointStore(directory, generation, keep=2, job_id=job_id,
                                     report=report)
        self._writer: threading.Thread | None = None

    def offer(self, step: int, payload: dict[str, Any]) -> bool:
        """Snapshot this step unless it is not due or the previous write is still running
        (skipping one is cheaper than stalling training)."""
        if step % self.every or (self._writer is not None and self._writer.is_alive()):
            return False
        copy = detached_copy(payload)
        self._writer = threading.Thread(target=self._write, args=(step, copy), daemon=True,
                                        name=f"snapshot-{step}")
        self._writer.start()
        return True

    def _write(self, step: int, payload: dict[str, Any]) -> None:
        try:
            self.store.save(step, payload)
        except Exception as exc:  # noqa: BLE001 - a lost snapshot only costs recovery time
            log.warning("snapshot_failed", step=step, error=str(exc))

    def latest(self) -> Checkpoint | None:
        self.wait()
        return self.store.latest()

    def wait(self) -> None:
        if self._writer is not None:
            self._writer.join()
