"""What `coordd stop` tells a person once coordd has ended: what the stop did to each job that
ran on local nodes (it resumes at the next start, or it was failed and why), read from the
events the stopping coordd recorded (`coordd.stopped`, see reconciler/resume.py)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from contract import events as ev


def outcomes(db_path: Path, since: float) -> list[str]:
    """One line per job the stop (at or after `since`, wall clock) ended on local nodes."""
    if not db_path.exists():
        return []
    try:
        with sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=5) as db:
            rows = db.execute(
                "SELECT e.job_id, j.name, e.data_json, j.reason FROM events e "
                "JOIN jobs j ON j.id = e.job_id WHERE e.kind = ? AND e.time >= ? "
                "ORDER BY e.seq", (ev.COORDD_STOPPED, since)).fetchall()
    except sqlite3.Error as exc:
        return [f"what the stop did to running jobs is unknown: cannot read {db_path}: {exc}"]
    return [_describe(job_id, name, ev.parse(ev.COORDD_STOPPED, data), reason)
            for job_id, name, data, reason in rows]


def _describe(job_id: str, name: str, stopped: ev.Payload | ev.Unknown, reason: str) -> str:
    if isinstance(stopped, ev.Unknown):
        return f"job {job_id} ({name}): what the stop did is unknown: {stopped.error}"
    if isinstance(stopped, ev.CoorddStopped) and stopped.resume:
        return (f"job {job_id} ({name}): its local nodes stopped; it resumes from its "
                f"checkpoint (step {stopped.checkpoint_step} or later) at coordd's next "
                "start")
    return f"job {job_id} ({name}): FAILED: {reason}"
