"""The scale benchmark's rig: a real coordd (default settings: TLS, SQLite in a temp dir) with
the `sim` provider and Prometheus on, load-generator processes (bench/scaleagents.py), and
ways to look at both from outside (/proc, coordd's database, its /metrics)."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from coordinator.localcluster import LocalCoordd, start_coordd, wait_for

HERE = Path(__file__).resolve().parent
TICK = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process so far (/proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


class Rig:
    def __init__(self, root: Path, env: dict[str, str] | None = None):
        self.root, self.spool = root, root / "spool"
        self.workdir = root / "job"  # what jobs ship: nothing
        self.workdir.mkdir()
        self.metrics_port = free_port()
        self.coordd: LocalCoordd = start_coordd(root / "state", env={
            "COORDD_SIM__SPOOL_DIR": str(self.spool),
            "COORDD_METRICS_LISTEN": f"127.0.0.1:{self.metrics_port}", **(env or {})})
        self.generators: list[subprocess.Popen] = []
        self._db: sqlite3.Connection | None = None

    @property
    def pid(self) -> int:
        return self.coordd.process.pid

    def add_generator(self, name: str, pool: int, log_rate: float = 1.0) -> subprocess.Popen:
        c = self.coordd
        proc = subprocess.Popen(
            [sys.executable, str(HERE / "scaleagents.py"), "--address", c.address,
             "--token", c.agent_token, "--ca", str(c.ca_path), "--spool", str(self.spool),
             "--name", name, "--prefix", name, "--pool", str(pool),
             "--log-rate", str(log_rate)], stdout=subprocess.DEVNULL,
            stderr=open(self.root / f"{name}.err", "ab"))
        self.generators.append(proc)
        return proc

    def stats(self) -> list[dict]:
        found = []
        for path in (self.spool / "stats").glob("*.json"):
            with contextlib.suppress(OSError, ValueError):
                found.append(json.loads(path.read_text()))
        return found

    def total(self, key: str) -> float:
        return sum(s.get(key, 0) for s in self.stats())

    def table(self, key: str, prefix: str) -> dict[str, dict]:
        """Merged `starts` or `reconfigures` entries whose key starts with `prefix`."""
        merged: dict[str, dict] = {}
        for s in self.stats():
            for name, entry in s.get(key, {}).items():
                if name.startswith(prefix):
                    m = merged.setdefault(name, {"count": 0, "first": entry["first"],
                                                 "last": entry["last"]})
                    m["count"] += entry["count"]
                    m["first"] = min(m["first"], entry["first"])
                    m["last"] = max(m["last"], entry["last"])
        return merged

    def ctl(self, node_id: str, action: str) -> None:
        (self.spool / "ctl").mkdir(parents=True, exist_ok=True)
        (self.spool / "ctl" / f"{node_id}.{action}").touch()

    def acted_at(self, node_id: str, action: str, timeout: float = 10) -> float:
        key = f"{node_id}.{action}"
        return wait_for(lambda: next((s["acted"][key] for s in self.stats()
                                      if key in s.get("acted", {})), None), timeout,
                        what=f"{key} to be done")

    def db(self) -> sqlite3.Connection:
        if self._db is None:
            path = self.coordd.state_dir / "coord.db"
            self._db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10,
                                       check_same_thread=False)
        return self._db

    def node_state(self, node_id: str) -> str:
        row = self.db().execute("select state from nodes where id=?", (node_id,)).fetchone()
        return row[0] if row else ""

    def count_state(self, state: str) -> int:
        return self.db().execute("select count(*) from nodes where state=?",
                                 (state,)).fetchone()[0]

    def wait_state(self, node_id: str, state: str, timeout: float = 30) -> float:
        """When the node's record first showed `state` (polled every 10 ms)."""
        wait_for(lambda: self.node_state(node_id) == state, timeout, interval=0.01,
                 what=f"{node_id} {state}")
        return time.time()

    def metric(self, name: str) -> float:
        """A sample's value from coordd's /metrics (0 when absent)."""
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        text = urllib.request.urlopen(url, timeout=10).read().decode()
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == name:
                    return sample.value
        return 0.0

    def profile(self, out: Path) -> subprocess.Popen:
        """py-spy samples coordd until SIGINT, then writes collapsed stacks to `out`."""
        spy = Path(sys.executable).parent / "py-spy"
        return subprocess.Popen([str(spy), "record", "--pid", str(self.pid), "--format", "raw",
                                 "--rate", "50", "--output", str(out)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def generator_cpu(self) -> float:
        return sum(cpu_seconds(g.pid) for g in self.generators if g.poll() is None)

    def close(self) -> None:
        for proc in self.generators:
            proc.terminate()
        for proc in self.generators:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(10)
            if proc.poll() is None:
                proc.kill()
        if self._db is not None:
            self._db.close()
        self.coordd.stop()
