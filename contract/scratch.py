"""What a job keeps on a node outside its working directory, and its removal: in-memory
snapshots (`ROOT/JOB_ID/NODE_ID`, ROOT in /dev/shm) and temp space
(`WORKDIR/.coord-tmp/JOB_ID`, the workers' TMPDIR). Neither may outlive the job: the agent
removes its node's part when the node leaves, coordd's local provider removes a vanished
node's part, and at start an agent removes what it holds of jobs coordd says are finished or
unknown (a node SIGKILLed with its host left running).

Both roots may hold what is not coord's (ROOT may be /dev/shm itself, or be shared with
other coordds), so each job folder coord creates carries an owner mark naming the coordd
that started the job: only marked folders with a job id's name are reported, and a folder
is removed on a coordd's word only when its mark names that coordd."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
from pathlib import Path

ROOT_ENV = "COORD_SNAPSHOT_ROOT"  # where snapshots go instead of /dev/shm/coord-snapshots
MAX_REPORTED_JOBS = 1024  # a Register names at most this many (coordd refuses more)
MARK = ".coord-job"  # in each job folder: the id of the coordd that owns it
JOB_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")  # what coordd accepts as a job id


def snapshot_root(workdir: Path) -> Path:
    if value := os.environ.get(ROOT_ENV):
        return Path(value)
    shm = Path("/dev/shm")
    return shm / "coord-snapshots" if shm.is_dir() else workdir / "snapshots"


def owner(folder: Path) -> str | None:
    """The coordd id in a job folder's mark; None for a folder coord did not make."""
    try:
        return (folder / MARK).read_text().strip() or None
    except (OSError, UnicodeDecodeError):
        return None


class Scratch:
    def __init__(self, root: Path, workdir: Path):
        self.root, self.workdir = root, workdir

    def snapshot_dir(self, job_id: str, node_id: str) -> Path:
        return self.root / job_id / node_id

    def tmp_dir(self, job_id: str) -> Path:
        return self.workdir / ".coord-tmp" / job_id

    def create(self, job_id: str, node_id: str, coordd_id: str) -> None:
        """The job's folders, each marked as coord's (made by `coordd_id`'s job)."""
        for folder in (self.root / job_id, self.tmp_dir(job_id)):
            folder.mkdir(parents=True, exist_ok=True)
            if owner(folder) is None:
                (folder / MARK).write_text(coordd_id + "\n")
        self.snapshot_dir(job_id, node_id).mkdir(exist_ok=True)

    def _folders(self, job_id: str) -> list[Path]:
        return [self.root / job_id, self.tmp_dir(job_id)]

    def jobs(self, coordd_id: str | None = None) -> list[str]:
        """The jobs this node holds anything of: marked folders named like a job id (those
        of `coordd_id` only, when given)."""
        names = set()
        for parent in (self.root, self.workdir / ".coord-tmp"):
            with contextlib.suppress(OSError):
                names.update(p.name for p in parent.iterdir()
                             if JOB_ID_RE.fullmatch(p.name) and p.is_dir()
                             and (mark := owner(p)) and coordd_id in (None, mark))
        return sorted(names)[:MAX_REPORTED_JOBS]

    def remove_node(self, job_id: str, node_id: str) -> None:
        """This node's part of the job; the job's snapshot folder too once it is empty."""
        shutil.rmtree(self.snapshot_dir(job_id, node_id), ignore_errors=True)
        shutil.rmtree(self.tmp_dir(job_id), ignore_errors=True)
        folder = self.root / job_id
        with contextlib.suppress(OSError):
            if {p.name for p in folder.iterdir()} <= {MARK}:
                (folder / MARK).unlink(missing_ok=True)
                folder.rmdir()

    def remove_job(self, job_id: str, coordd_id: str) -> None:
        """Everything of a job `coordd_id` says ended: every node's snapshots under this
        root, and its temp space; never a folder whose mark names another coordd."""
        if not JOB_ID_RE.fullmatch(job_id) or not coordd_id:
            return
        for folder in self._folders(job_id):
            if owner(folder) == coordd_id:
                shutil.rmtree(folder, ignore_errors=True)

    def remove_node_everywhere(self, node_id: str) -> None:
        """A vanished node's part of every job (its memory would have gone with it)."""
        for job_id in self.jobs():
            self.remove_node(job_id, node_id)
