"""The `ssh` provider: hosts you already have, listed in coordd's config (`[[ssh.hosts]]`).
A job takes free hosts from that pool, one node per host; coordd bootstraps each over SSH
(sshboot.py) and stops its agent over SSH when the node goes. The node verbs (exec,
upload, download) run over SSH and SFTP in the node's work directory."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import posixpath
import shlex
from collections.abc import AsyncIterator, Awaitable, Mapping
from typing import TypeVar

import asyncssh
import structlog

from contract import events as ev
from contract.errors import Conflict, CoordError, ProviderError
from contract.spec import JobSpec
from contract.states import NodeState
from coordinator.providers.base import AgentAccess, JobEvents, Provider
from coordinator.providers.nodeio import CHUNK, ExecOutput, merged, node_path, path_error
from coordinator.providers.sshboot import Bootstrap, stop_script
from coordinator.providers.sshhost import (COMMAND_TIMEOUT_S, HostError, connect, describe,
                                           exit_code, run)
from coordinator.providers.wheel import Wheel, build
from coordinator.settings import SshHost, SshSettings
from coordinator.store import JobRecord, NodeRecord

log = structlog.get_logger("coordinator.providers.ssh")
T = TypeVar("T")
# A lost node's host may answer again: give its agent this long to stop before SIGKILL.
LOST_KILL_AFTER_S = 5.0
# The registry's join clock for an ssh node: bootstrap_timeout_s, plus the time its launch
# may spend stopping an agent that came up too late.
JOIN_MARGIN_S = 60.0


class SshProvider(Provider):
    name = "ssh"

    def __init__(self, settings: SshSettings, access: AgentAccess, stop_grace_s: float,
                 events: JobEvents):
        self.settings, self.access, self.stop_grace_s = settings, access, stop_grace_s
        self.events = events
        self.hosts = {host.name: host for host in settings.hosts}
        self.join_timeout_s = settings.bootstrap_timeout_s + JOIN_MARGIN_S  # read by the registry
        self._owner: dict[str, str] = {}  # host name -> the node running there
        self._booting: set[str] = set()   # nodes whose bootstrap is under way
        for host in settings.hosts:
            if not host.check_host_key:
                log.warning("ssh.host_key_unchecked", host=host.name,
                            risk="anyone who can intercept the connection gets the agent token")
        self._wheel: Wheel | None = None
        self._wheel_lock = asyncio.Lock()

    async def start(self, known: Mapping[str, NodeRecord]) -> None:
        """After a restart: hosts whose node is still alive stay taken."""
        for node in known.values():
            host = node.provider_data.get("host")
            if node.provider == self.name and host in self.hosts and \
                    node.state not in (NodeState.LOST, NodeState.GONE):
                self._owner[host] = node.id

    # launch ------------------------------------------------------------------------------
    async def launch(self, nodes: list[NodeRecord], job: JobRecord, spec: JobSpec) -> None:
        wheel = await self._build_wheel()
        results = await asyncio.gather(*(self._launch_one(node, job, wheel) for node in nodes),
                                       return_exceptions=True)
        errors = [r for r in results if isinstance(r, BaseException)]
        for error in errors:
            if not isinstance(error, CoordError):
                raise error  # a bug, not a host's trouble: let it show as one
        if errors:
            raise ProviderError("; ".join(str(e) for e in errors))

    async def _build_wheel(self) -> Wheel:
        async with self._wheel_lock:  # once per coordd: the code it runs does not change
            if self._wheel is None:
                self._wheel = await asyncio.to_thread(build)
                log.info("ssh.wheel_built", wheel=self._wheel.filename, bytes=len(self._wheel.data))
            return self._wheel

    async def _launch_one(self, node: NodeRecord, job: JobRecord, wheel: Wheel) -> None:
        host = self._claim(node)
        node.host = host.address
        node.provider_data = {"host": host.name}
        log.info(ev.SSH_BOOTSTRAP, node=node.id, host=host.name, address=host.address)
        await self.events(job.id, ev.SSH_BOOTSTRAP, f"node {node.id}: bootstrapping on ssh host "
                          f"{host.name} ({describe(host)})",
                          ev.SshBootstrapped(node=node.id, host=host.name))
        self._booting.add(node.id)
        try:
            await Bootstrap(host, node, self.settings, self.access, wheel).run()
        finally:
            self._booting.discard(node.id)
            if node.state in (NodeState.LOST, NodeState.GONE):  # removed while booting
                await self._stop(node, lost=False)
        if node.state.alive:
            log.info("ssh.node_ready", node=node.id, host=host.name)

    def _claim(self, node: NodeRecord) -> SshHost:
        for name, host in self.hosts.items():
            if name not in self._owner:
                self._owner[name] = node.id
                return host
        busy = ", ".join(f"{h} ({n})" for h, n in self._owner.items())
        raise ProviderError(f"no free ssh host for node {node.id}: all {len(self.hosts)} "
                            f"configured hosts run a node ({busy})")

    # terminate ---------------------------------------------------------------------------
    async def terminate(self, node: NodeRecord, *, lost: bool) -> None:
        if node.id not in self._booting:  # else its launch stops it once the agent is up
            await self._stop(node, lost)

    async def _stop(self, node: NodeRecord, lost: bool) -> None:
        name, pid = node.provider_data.get("host", ""), node.provider_data.get("pid")
        host = self.hosts.get(name)
        try:
            if host and pid:
                patience = LOST_KILL_AFTER_S if lost else self.stop_grace_s + 5
                async with await self._connect(host, "stop") as conn:
                    await run(conn, host, "stop", stop_script(int(pid), node.id, patience),
                              timeout_s=patience + COMMAND_TIMEOUT_S)
                log.info("ssh.agent_stopped", node=node.id, host=name, pid=pid)
        except HostError as exc:  # the host is gone too: nothing left to stop politely
            log.warning("ssh.stop_failed", node=node.id, host=name, error=str(exc))
        finally:
            if self._owner.get(name) == node.id:
                del self._owner[name]

    # node verbs --------------------------------------------------------------------------
    def _where(self, node: NodeRecord) -> tuple[SshHost, str]:
        host = self.hosts.get(node.provider_data.get("host", ""))
        workdir = node.provider_data.get("workdir")
        if host is None or not workdir:
            raise Conflict(f"node {node.id}: not bootstrapped on a configured ssh host (yet)")
        return host, workdir

    async def _connect(self, host: SshHost, step: str) -> asyncssh.SSHClientConnection:
        return await connect(host, self.settings.connect_timeout_s, step)

    async def exec(self, node: NodeRecord, command: str) -> AsyncIterator[ExecOutput]:
        host, workdir = self._where(node)
        venv = node.provider_data.get("venv", "")
        # `python` means the node's environment, as for the job's workers; set inside the
        # command, since bash started over ssh reads ~/.bashrc first, which may change PATH.
        inner = f'export PATH={venv}/bin:"$PATH"\n{command}'
        script = f"cd {shlex.quote(workdir)} && exec bash -c {shlex.quote(inner)}"
        async with await self._connect(host, "exec") as conn:
            try:
                process = await conn.create_process(script, encoding=None)
            except (OSError, asyncssh.Error) as exc:
                raise HostError(host, "exec", f"connection broke: {exc}") from None
            try:
                process.stdin.write_eof()
                async with contextlib.aclosing(merged(process.stdout, process.stderr)) as pieces:
                    async for piece in pieces:
                        yield piece
                await process.wait()
            except (OSError, asyncssh.Error) as exc:
                raise HostError(host, "exec", f"connection broke: {exc}") from None
            finally:
                if process.returncode is None:  # the caller went away: so does the command
                    with contextlib.suppress(OSError, asyncssh.Error):
                        process.kill()
            yield ExecOutput(exit_code=exit_code(process, host, "exec"))

    async def upload(self, node: NodeRecord, path: str, chunks: AsyncIterator[bytes]) -> str:
        host, workdir = self._where(node)
        target = node_path(workdir, path)
        partial = f"{target}.partial"  # appears whole or not at all
        async with await self._connect(host, "upload") as conn, \
                conn.start_sftp_client() as sftp:
            await _on_host(node, target, sftp.makedirs(posixpath.dirname(target), exist_ok=True))
            if await _on_host(node, target, sftp.isdir(target)):
                raise path_error(node.id, target, IsADirectoryError(errno.EISDIR, "a directory"))
            file = await _on_host(node, target, sftp.open(partial, "wb"))
            try:
                try:
                    async for data in chunks:  # the sender's trouble passes through as it is
                        await _on_host(node, target, file.write(data))
                finally:
                    await _on_host(node, target, file.close())
                await _on_host(node, target, sftp.posix_rename(partial, target))
            finally:  # any failure, the caller's cancellation included; gone after a rename
                with contextlib.suppress(OSError, asyncssh.Error, TimeoutError):
                    await asyncio.wait_for(sftp.remove(partial), self.settings.connect_timeout_s)
        return target

    async def download(self, node: NodeRecord, path: str) -> AsyncIterator[bytes]:
        host, workdir = self._where(node)
        source = node_path(workdir, path)
        async with await self._connect(host, "download") as conn, \
                conn.start_sftp_client() as sftp:
            if await _on_host(node, source, sftp.isdir(source)):
                raise path_error(node.id, source, IsADirectoryError(errno.EISDIR, "a directory"))
            async with await _on_host(node, source, sftp.open(source, "rb")) as file:
                while data := await _on_host(node, source, file.read(CHUNK)):
                    yield data


async def _on_host(node: NodeRecord, path: str, operation: Awaitable[T]) -> T:
    """An SFTP operation; its failure as a typed error naming the node and the path."""
    try:
        return await operation
    except (OSError, asyncssh.SFTPError) as exc:
        raise path_error(node.id, path, _os_error(exc)) from None


def _os_error(exc: OSError | asyncssh.SFTPError) -> OSError:
    if isinstance(exc, OSError):
        return exc
    number = {asyncssh.FX_NO_SUCH_FILE: errno.ENOENT, asyncssh.FX_PERMISSION_DENIED: errno.EACCES,
              asyncssh.FX_NO_SPACE_ON_FILESYSTEM: errno.ENOSPC,
              asyncssh.FX_QUOTA_EXCEEDED: errno.EDQUOT}.get(exc.code, errno.EIO)
    return OSError(number, exc.reason)
