"""What a job keeps on a node outside its working directory, and its removal: in-memory
snapshots (`ROOT/JOB_ID/NODE_ID`, ROOT in /dev/shm) and temp space (`WORKDIR/tmp/JOB_ID`,
the workers' TMPDIR). Neither may outlive the job: the agent removes its node's part when
the node leaves, coordd's local provider removes a vanished node's part, and at start an
agent removes what it holds of jobs coordd says are finished or unknown (a node SIGKILLed
with its host left running)."""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path

ROOT_ENV = "COORD_SNAPSHOT_ROOT"  # where snapshots go instead of /dev/shm/coord-snapshots
MAX_REPORTED_JOBS = 1024  # a Register names at most this many (coordd refuses more)


def snapshot_root(workdir: Path) -> Path:
    if value := os.environ.get(ROOT_ENV):
        return Path(value)
    shm = Path("/dev/shm")
    return shm / "coord-snapshots" if shm.is_dir() else workdir / "snapshots"


class Scratch:
    def __init__(self, root: Path, workdir: Path):
        self.root, self.workdir = root, workdir

    def snapshot_dir(self, job_id: str, node_id: str) -> Path:
        return self.root / job_id / node_id

    def tmp_dir(self, job_id: str) -> Path:
        return self.workdir / "tmp" / job_id

    def jobs(self) -> list[str]:
        """The jobs this node holds anything of."""
        names = set()
        for parent in (self.root, self.workdir / "tmp"):
            with contextlib.suppress(OSError):
                names.update(p.name for p in parent.iterdir() if p.is_dir())
        return sorted(names)[:MAX_REPORTED_JOBS]

    def remove_node(self, job_id: str, node_id: str) -> None:
        """This node's part of the job; the job's snapshot directory too once it is empty."""
        shutil.rmtree(self.snapshot_dir(job_id, node_id), ignore_errors=True)
        shutil.rmtree(self.tmp_dir(job_id), ignore_errors=True)
        with contextlib.suppress(OSError):
            (self.root / job_id).rmdir()

    def remove_job(self, job_id: str) -> None:
        """Everything of a finished job: every node's snapshots under this root."""
        if job_id in ("", ".", "..") or "/" in job_id:
            return
        shutil.rmtree(self.root / job_id, ignore_errors=True)
        shutil.rmtree(self.tmp_dir(job_id), ignore_errors=True)

    def remove_node_everywhere(self, node_id: str) -> None:
        """A vanished node's part of every job (its memory would have gone with it)."""
        for job_id in self.jobs():
            self.remove_node(job_id, node_id)
