"""Which coordd runs on a state directory.

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
import signal
import time
import uuid
from pathlib import Path

from contract.errors import AlreadyRunning

PID_FILE = "coordd.pid"
ADDR_FILE = "coordd.addr"
# A `status` check holds a shared lock for an instant; a starting coordd waits that out.
ACQUIRE_PATIENCE_S = 1.0


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
            return _describe(fd, state_dir)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def live_address(state_dir: Path) -> str | None:
    """The address of the coordd running on `state_dir`; None when none runs, even if a
    coordd.addr is left over from one that crashed. For clients on coordd's machine."""
    found = running(state_dir)
    return found.address if found and found.address else None


def stop(state_dir: Path, timeout: float) -> Running | None:
    """SIGTERM to the coordd running on `state_dir`, then wait until it has let go of the
    directory. None when none ran; TimeoutError when it is still running after `timeout`."""
    found = running(state_dir)
    if found is None:
        return None
    if found.pid <= 0:  # never signal pid 0: that is this process group
        raise ProcessLookupError(f"a coordd holds {state_dir / PID_FILE} but the file names no "
                                 "pid")
    os.kill(found.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while running(state_dir) is not None:
        if time.monotonic() > deadline:
            raise TimeoutError(f"coordd (pid {found.pid}) still runs {timeout:g} s after "
                               f"SIGTERM; its log: {found.log_file}")
        time.sleep(0.05)
    return found


def _describe(fd: int, state_dir: Path) -> Running:
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


class InstanceLock:
    """Held by the running coordd: `acquire` at start, `announce` once it listens,
    `release` at the end of a clean stop (a crash releases it too)."""

    def __init__(self, state_dir: Path, log_file: Path):
        self.state_dir, self.log_file = state_dir, log_file
        self.path = state_dir / PID_FILE
        self.started_at = time.time()
        self._fd: int | None = None

    def acquire(self) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        deadline = time.monotonic() + ACQUIRE_PATIENCE_S
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    other = _describe(fd, self.state_dir)
                    os.close(fd)
                    raise AlreadyRunning(
                        f"another coordd (pid {other.pid}, address {other.address or '?'}) "
                        f"already runs on {self.state_dir}: stop it with `coordd stop "
                        f"--state-dir {self.state_dir}`, or give this one its own --state-dir"
                    ) from None
                time.sleep(0.05)
        self._fd = fd
        self._write("")

    def announce(self, address: str) -> None:
        """coordd listens on `address`: say so in the pid file and in coordd.addr."""
        self._write(address)
        tmp = self.state_dir / f"{ADDR_FILE}.tmp"
        tmp.write_text(address + "\n")
        tmp.replace(self.state_dir / ADDR_FILE)

    def release(self) -> None:
        if self._fd is None:
            return
        (self.state_dir / ADDR_FILE).unlink(missing_ok=True)
        os.ftruncate(self._fd, 0)
        os.close(self._fd)  # drops the lock
        self._fd = None

    def _write(self, address: str) -> None:
        body = json.dumps({"pid": os.getpid(), "address": address,
                           "started_at": self.started_at, "log_file": str(self.log_file)})
        data = body.encode() + b"\n"
        os.pwrite(self._fd, data, 0)
        os.ftruncate(self._fd, len(data))


def load_or_create_id(path: Path) -> str:
    """This coordd's identity (in EC2 tags and the owner marks of its jobs' node folders):
    created once in its state directory."""
    if path.exists():
        return path.read_text().strip()
    identity = uuid.uuid4().hex[:16]
    path.write_text(identity + "\n")
    return identity
