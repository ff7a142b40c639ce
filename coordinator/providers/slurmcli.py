"""Running Slurm's commands (sbatch, squeue, scancel, sinfo) for the slurm provider: on
coordd's own host through asyncio subprocesses, or on a login node over SSH (asyncssh, with
the ssh provider's host settings). Both run a shell script and hand back its exit status and
output; every failure to run one at all is a ProviderError that says where."""

from __future__ import annotations

import asyncio
import dataclasses
import os

import asyncssh

from contract.errors import ProviderError
from coordinator.providers.sshhost import COMMAND_TIMEOUT_S, HostError, complete, connect
from coordinator.settings import SshHost


@dataclasses.dataclass(frozen=True)
class Result:
    status: int
    stdout: str
    stderr: str


class LocalShell:
    """Slurm's commands on coordd's host (coordd runs on a login node or a submit host)."""

    where = "coordd's host"

    async def run(self, script: str, stdin: str | None = None,
                  timeout_s: float = COMMAND_TIMEOUT_S) -> Result:
        try:
            proc = await asyncio.create_subprocess_exec(
                "bash", "-c", script, stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
                env=os.environ.copy())
        except OSError as exc:
            raise ProviderError(f"slurm: cannot run bash on {self.where}: {exc}") from None
        try:
            async with asyncio.timeout(timeout_s):
                out, err = await proc.communicate((stdin or "").encode())
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise ProviderError(f"slurm: no answer within {timeout_s:g} s on {self.where}: "
                                f"{script[:200]}") from None
        return Result(proc.returncode or 0, out.decode(errors="replace"),
                      err.decode(errors="replace"))

    async def close(self) -> None:
        pass


class SshShell:
    """Slurm's commands on a login node: one SSH connection, opened when first needed and
    again after it breaks."""

    def __init__(self, host: SshHost, connect_timeout_s: float):
        self.host, self.connect_timeout_s = host, connect_timeout_s
        self.where = f"login node {host.name}"
        self._conn: asyncssh.SSHClientConnection | None = None
        self._lock = asyncio.Lock()

    async def _connection(self) -> asyncssh.SSHClientConnection:
        async with self._lock:
            if self._conn is None:
                self._conn = await connect(self.host, self.connect_timeout_s, "slurm")
            return self._conn

    async def run(self, script: str, stdin: str | None = None,
                  timeout_s: float = COMMAND_TIMEOUT_S) -> Result:
        conn = await self._connection()
        try:
            done = await complete(conn, self.host, "slurm", script, stdin, timeout_s)
        except HostError:
            self._conn = None  # broken: the next call connects again
            conn.close()
            raise
        status = done.exit_status if done.exit_status is not None else 255
        return Result(status, str(done.stdout or ""), str(done.stderr or ""))

    async def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
