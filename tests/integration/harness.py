"""Test helpers: the package's local cluster, plus a look at a job's processes the way a
person with `ps` would."""

from __future__ import annotations

import contextlib
import os
import shutil
import textwrap
from pathlib import Path

from agent.warm import WARM_MAIN
from coordinator.localcluster import LocalCoordd, start_coordd, wait_for

ROOT = Path(__file__).resolve().parents[2]
Coordd = LocalCoordd
__all__ = ["ROOT", "Coordd", "elastic_job", "job_pids", "start_coordd", "wait_for"]


def elastic_job(work: Path, job_toml: str) -> Path:
    """examples/elastic copied to `work`, with `job_toml` (dedented) as its job file; the
    job file's path."""
    shutil.copytree(ROOT / "examples" / "elastic", work)
    path = work / "job.toml"
    path.write_text(textwrap.dedent(job_toml))
    return path


def job_pids(job_id: str) -> list[int]:
    """Every process on this machine running the job: its environment names the job, or it is
    a warm-started worker (whose initial environment is the agent's) working in the job's
    directory on a node (`.../jobs/JOB_ID`)."""
    needle = f"COORD_JOB_ID={job_id}".encode()
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if needle in (entry / "environ").read_bytes().split(b"\0") or (
                        WARM_MAIN.encode() in (entry / "cmdline").read_bytes().split(b"\0")
                        and Path(os.readlink(entry / "cwd")).parts[-2:] == ("jobs", job_id)):
                    pids.append(int(entry.name))
    return pids
