"""A real PostgreSQL for the tests: Debian's postgresql-15 binaries, a cluster made by initdb
in a temp dir, run by pg_ctl as an unprivileged user on a free port (and a unix socket in
the same dir), stopped and removed at the end. Each test gets its own database."""

from __future__ import annotations

import dataclasses
import itertools
import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path

from tests.net import free_port

BIN_DIRS = [Path("/usr/lib/postgresql/15/bin"), Path("/usr/lib/postgresql/16/bin")]
UNPRIVILEGED = "postgres"  # initdb and postgres refuse to run as root
MISSING = ("PostgreSQL server binaries (initdb, pg_ctl) not found: install Debian's "
           "postgresql-15 (bash scripts/setup.sh does, as root)")


def bin_dir() -> Path | None:
    return next((d for d in BIN_DIRS if (d / "initdb").exists()), None)


@dataclasses.dataclass
class Postgres:
    bin: Path
    data: Path
    port: int
    host: str = "127.0.0.1"
    user: str = "coord"
    _names: itertools.count = dataclasses.field(default_factory=lambda: itertools.count(1))

    def url(self, database: str = "postgres", host: str | None = None) -> str:
        return (f"postgresql+asyncpg://{self.user}@{host or self.host}:{self.port}/"
                f"{database}")

    def psql(self, sql: str, database: str = "postgres") -> str:
        """Run SQL over the unix socket in the cluster's dir; its output, unaligned."""
        return subprocess.run(
            [str(self.bin / "psql"), "-h", str(self.data), "-p", str(self.port), "-U", self.user,
             "-d", database, "-XAtq", "-v", "ON_ERROR_STOP=1", "-c", sql],
            check=True, capture_output=True, text=True, timeout=30).stdout.strip()

    def new_database(self) -> str:
        """A fresh, empty database; its URL."""
        name = f"t{os.getpid()}_{next(self._names)}"
        self.psql(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def stop(self) -> None:
        _run_as(self.data, [str(self.bin / "pg_ctl"), "-D", str(self.data / "db"),
                            "-m", "immediate", "-w", "stop"], check=False)
        shutil.rmtree(self.data, ignore_errors=True)


def _run_as(owner_dir: Path, argv: list[str], check: bool = True) -> None:
    """As the unprivileged user when we are root (the dir is theirs), else as ourselves."""
    user = UNPRIVILEGED if os.geteuid() == 0 else None
    result = subprocess.run(argv, user=user, capture_output=True, text=True, timeout=60,
                            cwd=owner_dir)
    if check and result.returncode != 0:
        raise RuntimeError(f"{Path(argv[0]).name} failed ({result.returncode}): "
                           f"{result.stdout[-1500:]}{result.stderr[-1500:]}")


def start(listen: str = "127.0.0.1", trusted_net: str = "") -> Postgres:
    """initdb + pg_ctl start; `listen` is postgres' listen_addresses and `trusted_net` a
    CIDR whose clients may connect too (a test's own network namespace)."""
    found = bin_dir()
    if found is None:
        raise FileNotFoundError(MISSING)
    data = Path(tempfile.mkdtemp(prefix="coord-pg-"))
    if os.geteuid() == 0:
        entry = pwd.getpwnam(UNPRIVILEGED)
        os.chown(data, entry.pw_uid, entry.pw_gid)
    port = free_port()
    pg = Postgres(found, data, port)
    _run_as(data, [str(found / "initdb"), "-D", str(data / "db"), "-U", pg.user, "-A", "trust",
                   "-E", "UTF8", "--no-sync"])
    if trusted_net:
        with open(data / "db" / "pg_hba.conf", "a") as hba:
            hba.write(f"host all all {trusted_net} trust\n")
    options = (f"-p {port} -k {data} -c listen_addresses='{listen}' -c fsync=off "
               "-c synchronous_commit=off -c full_page_writes=off -c max_connections=200")
    try:
        _run_as(data, [str(found / "pg_ctl"), "-D", str(data / "db"), "-l", str(data / "log"),
                       "-o", options, "-w", "-t", "60", "start"])
    except RuntimeError as exc:
        log = (data / "log").read_text()[-2000:] if (data / "log").exists() else ""
        shutil.rmtree(data, ignore_errors=True)
        raise RuntimeError(f"{exc}\n{log}") from None
    return pg
