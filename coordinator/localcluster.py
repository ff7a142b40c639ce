"""A real coordd in a subprocess with a private state directory, on a free loopback port:
what the tests and benchmarks use, and a quick way to try coord from Python.

    cluster = start_coordd(Path("/tmp/coord-try"))
    with cluster.client() as client:         # or os.environ.update(cluster.env) for `coord`
        ...
    cluster.stop()
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import grpc

from coordinator.providers.procs import signal_session

BIN = Path(sys.executable).parent


def wait_for(predicate, timeout: float, interval: float = 0.05, what: str = "condition"):
    """Poll until `predicate()` is truthy and return it; TimeoutError naming `what` after
    `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout} s waiting for {what}")


@dataclasses.dataclass
class LocalCoordd:
    state_dir: Path
    process: subprocess.Popen
    address: str
    token: str
    log_path: Path

    @property
    def ca_path(self) -> Path:
        return self.state_dir / "tls" / "ca.pem"

    @property
    def agent_token(self) -> str:
        return (self.state_dir / "agent-token").read_text().strip()

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "COORD_ADDR": self.address, "COORD_TOKEN": self.token,
                "COORD_CA": str(self.ca_path), "COORDD_STATE_DIR": str(self.state_dir)}

    def channel(self):
        """A raw blocking gRPC channel over TLS, for speaking the wire directly."""
        return grpc.secure_channel(self.address, grpc.ssl_channel_credentials(
            self.ca_path.read_bytes()))

    def client(self, token: str | None = None):
        """A blocking SDK client for this coordd (TLS with its CA, the client token)."""
        from coordinator.client.sdk import Client
        return Client(self.address, token or self.token, ca=self.ca_path)

    def cli(self, *args: str, timeout: float = 120, cwd: Path | None = None
            ) -> subprocess.CompletedProcess:
        return subprocess.run([str(BIN / "coord"), *args], env=self.env, cwd=cwd,
                              capture_output=True, text=True, timeout=timeout)

    def node_pid(self, node_id: str) -> int:
        """The agent pid of a local node, which is also its session id: the whole 'machine'."""
        with sqlite3.connect(self.state_dir / "coord.db") as db:
            row = db.execute("select provider_json from nodes where id=?", (node_id,)).fetchone()
        return json.loads(row[0])["pid"]

    def kill_node(self, node_id: str, sig: signal.Signals = signal.SIGKILL) -> int:
        """The machine vanishes (SIGKILL) or freezes (SIGSTOP): its agent and every worker."""
        return signal_session(self.node_pid(node_id), sig)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def _owner_only(path: str, flags: int) -> int:
    return os.open(path, flags, 0o600)


def start_coordd(state_dir: Path, *flags: str, env: dict[str, str] | None = None,
                 listen: str = "127.0.0.1:0", prefix: list[str] | None = None) -> LocalCoordd:
    """Start coordd; `listen` with a fixed port lets a restarted coordd keep its address;
    `prefix` runs it through a wrapper (`ip netns exec NAME`: another "host")."""
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    addr_file = state_dir / "coordd.addr"
    addr_file.unlink(missing_ok=True)
    # coordd writes its structured log to STATE_DIR/coordd.log itself; what it prints (where
    # it listens, warnings, a crash's traceback) goes beside it.
    with open(state_dir / "coordd.out", "ab", opener=_owner_only) as out:
        process = subprocess.Popen(
            [*(prefix or []), str(BIN / "coordd"), "serve", "--state-dir", str(state_dir),
             "--listen", listen, *flags], stdout=out, stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})})
    address = wait_for(lambda: process.poll() is not None or (
        addr_file.exists() and addr_file.read_text().strip()), 30, what="coordd to listen")
    if process.poll() is not None:
        raise RuntimeError(f"coordd exited with {process.returncode}: "
                           f"{(state_dir / 'coordd.out').read_text()[-2000:]}")
    token = (state_dir / "token").read_text().strip()
    return LocalCoordd(state_dir, process, address, token, state_dir / "coordd.log")
