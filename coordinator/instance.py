"""coordd's side of its state directory's lock: held for coordd's whole life (see
contract/instance.py for what the lock and the pid file tell whoever looks), `stop` to end the
coordd that holds it, and coordd's persistent id."""

from __future__ import annotations

import fcntl
import json
import os
import signal
import time
import uuid
from pathlib import Path

from contract.errors import AlreadyRunning
from contract.instance import ADDR_FILE, PID_FILE, Running, describe, running

# A `status` check holds a shared lock for an instant; a starting coordd waits that out.
ACQUIRE_PATIENCE_S = 1.0


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
                    other = describe(fd, self.state_dir)
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
