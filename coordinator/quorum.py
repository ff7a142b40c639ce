"""The quorum service of in-process jobs: one torchft Lighthouse per job, run by coordd.

It lives in a subprocess on coordd's machine (so it survives the loss of any node), on a port
fixed when the job starts: when the process dies it is started again on the same port, and the
replicas (TORCHFT_QUORUM_RETRIES > 0) reconnect to it without losing a committed step. It is
stopped when the job ends. Its port and pid are kept in a lease file in coordd's state
directory, so a coordd that restarts (after a crash, whose Lighthouse may still run) takes the
same port back and supervises it again instead of sending joiners to a second Lighthouse.

A Lighthouse serves only while its coordd may act. coordd writes on the Lighthouse's stdin,
after each renewal of its lease on PostgreSQL, the time (this host's monotonic clock) until
which it leads; the Lighthouse shuts down when that time passes without a newer one. A leader
that is killed, frozen or cut off thus loses its Lighthouses before any standby can take over
and start its own: the replicas never meet in two quorums at once, and a deposed leader leaves
nothing running. Without a lease (SQLite) a Lighthouse whose coordd ended (its stdin closed)
serves on for ORPHAN_S, long enough for a restarted coordd to take it back, then ends too.

`python -m coordinator.quorum --bind HOST:PORT --min-replicas N` runs one Lighthouse. It loads
torchft's native extension by path, not through `import torchft` (which imports torch): a
restart then takes milliseconds instead of the seconds torch needs, and training waits on it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.machinery
import importlib.util
import io
import math
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import structlog

from contract import events as ev

log = structlog.get_logger("coordinator.quorum")
# torchft's Python `LighthouseServer` defaults (join timeout 100 ms) keep a re-formation short; the
# heartbeat timeout bounds how long a silent (frozen) replica keeps a quorum waiting, and how
# long a replica killed between its quorum request and the quorum counts as healthy (quorums
# stalled that long at 5000 ms). Replicas heartbeat every 100 ms from a native thread.
JOIN_TIMEOUT_MS = 100
HEARTBEAT_TIMEOUT_MS = 2000
# A quorum that lost a member forms at the first check after the join timeout: torchft checks
# every 100 ms (up to one more interval per re-formation), every 10 ms costs the Lighthouse little.
QUORUM_TICK_MS = 10
RESTART_BACKOFF_S = (0.0, 0.1, 0.5, 1.0, 2.0)  # then 2 s between tries
ORPHAN_S = 300.0


class QuorumUnavailable(RuntimeError):
    """torchft is not installed where coordd runs: in-process jobs cannot start here."""


def lighthouse_available() -> bool:
    return importlib.util.find_spec("torchft") is not None


class QuorumService:
    """Runs and watches one job's Lighthouse; `address` is what workers connect to."""

    def __init__(self, job_id: str, host: str, min_replicas: int, on_event, lease: Path,
                 until: Callable[[], float] = lambda: math.inf) -> None:
        self.job_id, self.host, self.min_replicas = job_id, host, min_replicas
        self.on_event = on_event  # async (kind, message, payload): recorded in the job's events
        self.lease = lease  # "PORT PID" of the running Lighthouse, for a restarted coordd
        self.until = until  # until when coordd leads (monotonic; inf without a lease)
        self.port = 0
        self.process: asyncio.subprocess.Process | None = None
        self.restarts = 0
        self._task: asyncio.Task | None = None
        self._stopping = False

    @property
    def address(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def start(self) -> str:
        if not lighthouse_available():
            raise QuorumUnavailable("torchft is not installed on coordd's machine "
                                    "(pip install 'coord[elastic]')")
        previous = await asyncio.to_thread(_read_lease, self.lease)
        if previous:  # coordd restarted: same port, and no second Lighthouse beside an orphan
            self.port = previous[0]
            await asyncio.to_thread(_stop_orphan, previous[1], self.port)
        else:
            self.port = _free_port(self.host)
        await self._spawn()
        self._task = asyncio.get_running_loop().create_task(self._watch())
        return self.address

    async def _spawn(self) -> None:
        self.process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "coordinator.quorum", "--bind", f"{self.host}:{self.port}",
            "--min-replicas", str(self.min_replicas), stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
            cwd=str(Path(__file__).resolve().parent.parent), start_new_session=True)
        self.renew(self.until())
        await asyncio.to_thread(_write_lease, self.lease, self.port, self.process.pid)
        log.info(ev.QUORUM_STARTED, job=self.job_id, address=self.address, pid=self.process.pid)

    def renew(self, until: float) -> None:
        """Let the Lighthouse serve until `until` (monotonic), as long as coordd leads."""
        process = self.process
        if math.isinf(until) or process is None or process.stdin is None:
            return
        if process.returncode is None and not process.stdin.is_closing():
            process.stdin.write(f"{until!r}\n".encode())

    async def _watch(self) -> None:
        """Restart the Lighthouse on the same port whenever it dies, until the job ends."""
        attempt = 0
        while not self._stopping:
            assert self.process is not None
            code = await self.process.wait()
            if self._stopping:
                return
            self.restarts += 1
            await self.on_event(ev.QUORUM_DIED, f"quorum service (Lighthouse) exited with code "
                                f"{code}; restarting it on port {self.port}",
                                ev.QuorumDied(code=code, address=self.address,
                                              restarts=self.restarts))
            await asyncio.sleep(RESTART_BACKOFF_S[min(attempt, len(RESTART_BACKOFF_S) - 1)])
            await self._spawn()
            attempt = attempt + 1 if await self._died_at_once() else 0

    async def _died_at_once(self) -> bool:
        """A Lighthouse that exits within a moment could not bind: back off before retrying."""
        assert self.process is not None
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(self.process.wait()), 0.3)
            return True
        return False

    async def stop(self, *, job_ended: bool = True) -> None:
        """Stop the Lighthouse; unless the job ended (coordd is shutting down) its lease is
        kept, so the next coordd brings it back on the same port."""
        self._stopping = True
        if job_ended:
            await asyncio.to_thread(self.lease.unlink, missing_ok=True)
        if self.process is not None and self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.terminate()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.process.wait(), 5)
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        log.info("quorum.stopped", job=self.job_id)


def public_host(settings) -> str:
    """Where workers reach coordd's machine: the advertised or listening host."""
    host = (settings.advertise or settings.listen).rpartition(":")[0].strip("[]")
    return socket.gethostname() if host in ("", "0.0.0.0", "::") else host


def _read_lease(path: Path) -> tuple[int, int] | None:
    try:
        port, pid = path.read_text().split()
        return int(port), int(pid)
    except (FileNotFoundError, ValueError):
        return None


def _write_lease(path: Path, port: int, pid: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(f"{port} {pid}\n")
    tmp.replace(path)


def _stop_orphan(pid: int, port: int) -> None:
    """End a Lighthouse a previous coordd left running, if that pid still is one (pids are
    reused: check its command line names this module and port)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return
    if b"coordinator.quorum" not in cmdline or not any(
            arg.endswith(f":{port}".encode()) for arg in cmdline):
        return
    for sig, patience in ((signal.SIGTERM, 3.0), (signal.SIGKILL, 2.0)):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + patience
        while time.monotonic() < deadline:
            if not Path(f"/proc/{pid}").exists():
                return
            time.sleep(0.05)


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _load_native():
    """torchft's Rust extension, without running torchft/__init__.py (which imports torch)."""
    spec = importlib.util.find_spec("torchft")
    if spec is None or spec.origin is None:
        raise QuorumUnavailable("torchft is not installed")
    [path] = Path(spec.origin).parent.glob("_torchft*.so")
    loader = importlib.machinery.ExtensionFileLoader("torchft._torchft", str(path))
    module = importlib.util.module_from_spec(
        importlib.util.spec_from_loader("torchft._torchft", loader))
    loader.exec_module(module)
    return module


class Lease:
    """Until when this Lighthouse serves (see the module's docstring)."""

    def __init__(self) -> None:
        self._until = math.inf
        self._changed = threading.Condition()

    def follow(self, stream: BinaryIO) -> None:
        """coordd's lines, one deadline each; the end of the stream is coordd's end."""
        with contextlib.suppress(OSError, ValueError):
            for line in stream:
                with contextlib.suppress(ValueError):
                    self._set(float(line))
        self._set(min(self._until, time.monotonic() + ORPHAN_S))

    def end(self) -> None:
        self._set(-math.inf)

    def _set(self, until: float) -> None:
        with self._changed:
            self._until = until
            self._changed.notify()

    def wait(self) -> None:
        """Return once the lease has run out. The wait is cut into short ones: a signal's
        handler (`end`) runs in this thread and may come between the check and the wait."""
        with self._changed:
            while (left := self._until - time.monotonic()) > 0:
                self._changed.wait(min(left, 1.0))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="one torchft Lighthouse for a coord job")
    parser.add_argument("--bind", required=True)
    parser.add_argument("--min-replicas", type=int, default=1)
    args = parser.parse_args(argv)
    server = _load_native().LighthouseServer(
        bind=args.bind, min_replicas=args.min_replicas, join_timeout_ms=JOIN_TIMEOUT_MS,
        quorum_tick_ms=QUORUM_TICK_MS, heartbeat_timeout_ms=HEARTBEAT_TIMEOUT_MS)
    lease = Lease()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: lease.end())
    stdin = sys.stdin.buffer if sys.stdin is not None else io.BytesIO()
    threading.Thread(target=lease.follow, args=(stdin,), daemon=True).start()
    lease.wait()
    server.shutdown()


if __name__ == "__main__":
    main()
