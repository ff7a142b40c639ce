"""Which coordd runs on a state directory, as whoever looks finds out (coordd's own side,
the lock it holds, is coordinator/instance.py).

The running coordd holds an exclusive lock (flock) on STATE_DIR/coordd.pid for its whole life,
and the file names it: pid, address, start time, log file. The kernel drops the lock when the
process ends, however it ends, so what a crashed coordd left behind (coordd.pid, coordd.addr)
is known to be stale by whoever looks: `coordd status` and `coordd stop`, a second coordd on
the same directory (it refuses to start while the lock is held), and clients that find the
address in the state directory (`live_address`).
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import os
import time
from pathlib import Path


def default_state_dir() -> Path:
    return Path(os.environ.get("XDG_STATE_HOME", Path.home() / ".local" / "state")) / "coord"


PID_FILE = "coordd.pid"
ADDR_FILE = "coordd.addr"
DASHBOARD_URL_FILE = "dashboard.url"  # the dashboard's URL, while coordd serves one


@dataclasses.dataclass(frozen=True)
class Running:
    """A live coordd, as its pid file describes it (address "" while it is starting)."""

    pid: int
    address: str
    started_at: float
    state_dir: Path
    log_file: str

    @property
    def uptime_s(self) -> float:
        return max(0.0, time.time() - self.started_at)


def running(state_dir: Path) -> Running | None:
    """The coordd that holds STATE_DIR's lock, or None when none does (whatever files say)."""
    try:
        fd = os.open(state_dir / PID_FILE, os.O_RDONLY)
    except (FileNotFoundError, NotADirectoryError):
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:  # held: a coordd runs
            return describe(fd, state_dir)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def live_address(state_dir: Path) -> str | None:
    """The address of the coordd running on `state_dir`; None when none runs, even if a
    coordd.addr is left over from one that crashed. For clients on coordd's machine."""
    found = running(state_dir)
    return found.address if found and found.address else None


def describe(fd: int, state_dir: Path) -> Running:
    """Parse the pid file; retried briefly, as its owner may be rewriting it."""
    data: dict = {}
    for _ in range(20):
        try:
            data = json.loads(os.pread(fd, 4096, 0) or b"{}")
            break
        except ValueError:
            time.sleep(0.01)
    return Running(pid=int(data.get("pid", 0)), address=str(data.get("address", "")),
                   started_at=float(data.get("started_at", time.time())),
                   state_dir=state_dir, log_file=str(data.get("log_file", "")))
