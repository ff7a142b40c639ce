"""A real coordd (subprocess) on loopback with a private state directory, and helpers to
look at the processes of a job the way a person with `ps` would."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from coordinator.providers.procs import signal_session

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def wait_for(predicate, timeout: float, interval: float = 0.05, what: str = "condition"):
    """Poll until `predicate()` is truthy; fail with `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout} s waiting for {what}")


def job_pids(job_id: str) -> list[int]:
    """Every process on this machine whose environment names the job."""
    needle = f"COORD_JOB_ID={job_id}".encode()
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if needle in (entry / "environ").read_bytes().split(b"\0"):
                    pids.append(int(entry.name))
    return pids


@dataclasses.dataclass
class Coordd:
    state_dir: Path
    process: subprocess.Popen
    address: str
    token: str
    log_path: Path

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "COORD_ADDR": self.address, "COORD_TOKEN": self.token,
                "COORDD_STATE_DIR": str(self.state_dir)}

    def cli(self, *args: str, timeout: float = 120, cwd: Path = ROOT) -> subprocess.CompletedProcess:
        return subprocess.run([str(BIN / "coord"), *args], env=self.env, cwd=cwd,
                              capture_output=True, text=True, timeout=timeout)

    def node_pid(self, node_id: str) -> int:
        """The agent pid of a local node (its session id: the whole 'machine')."""
        import json, sqlite3
        with sqlite3.connect(self.state_dir / "coord.db") as db:
            row = db.execute("select provider_json from nodes where id=?", (node_id,)).fetchone()
        return json.loads(row[0])["pid"]

    def kill_node(self, node_id: str, sig: signal.Signals = signal.SIGKILL) -> int:
        """The machine vanishes: signal its agent and every worker together."""
        return signal_session(self.node_pid(node_id), sig)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_coordd(state_dir: Path, *extra: str, env: dict | None = None) -> Coordd:
    state_dir.mkdir(parents=True, exist_ok=True)
    addr_file = state_dir / "coordd.addr"
    addr_file.unlink(missing_ok=True)
    log_path = state_dir / "coordd.log"
    process = subprocess.Popen(
        [str(BIN / "coordd"), "serve", "--state-dir", str(state_dir), "--listen", "127.0.0.1:0",
         *extra], stdout=open(log_path, "ab"), stderr=subprocess.STDOUT,
        env={**os.environ, "COORDD_LOG_JSON": "true", **(env or {})})
    address = wait_for(lambda: addr_file.exists() and addr_file.read_text().strip(), 30,
                       what="coordd to listen")
    token = (state_dir / "token").read_text().strip()
    return Coordd(state_dir, process, address, token, log_path)
