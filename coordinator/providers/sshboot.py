"""Bringing one node up on one ssh host: connect, prepare the remote directory, ship coord
(a wheel of this coordd's own code), install it into a venv, start `coord-agent` detached,
and wait until it registers. A failure names the host and the step; nothing on the host's
command lines carries a credential (the agent reads them from its environment, sent on
stdin)."""

from __future__ import annotations

import asyncio
import shlex

import asyncssh
import structlog

from contract.states import NodeState
from coordinator.providers.base import AgentAccess
from coordinator.providers.sshhost import (HostError, complete, connect, run, shell_path, tail,
                                           upload_bytes)
from coordinator.providers.wheel import Wheel
from coordinator.settings import SshHost, SshSettings
from coordinator.store import NodeRecord

log = structlog.get_logger("coordinator.providers.ssh")
ALIVE_CHECK_S = 1.0
DEFAULT_INSTALL = ("{{ [ -x {venv}/bin/python ] || {python} -m venv{flags} {venv}; }} && "
                   "{venv}/bin/python -m pip install --quiet {wheel}")


def venv_path(settings: SshSettings, remote_dir: str) -> str:
    """The venv as a shell word (the host expands a leading ~)."""
    return shell_path(settings.venv) if settings.venv else shlex.quote(f"{remote_dir}/venv")


def install_script(settings: SshSettings, venv: str, wheel: str, digest: str) -> str:
    """Install under a lock (host entries may share a machine and a venv), once per build."""
    flags = " --system-site-packages" if settings.system_site_packages else ""
    install = (settings.install_command or DEFAULT_INSTALL).format(
        python=settings.python, venv=venv, wheel=shlex.quote(wheel), flags=flags)
    marker = f"{venv}/.coord-wheel"
    return (f'mkdir -p "$(dirname {venv})" && exec 9>{venv}.lock && '
            "{ ! command -v flock >/dev/null || flock 9; } && "
            f'if [ "$(cat {marker} 2>/dev/null)" != {digest} ]; then '
            f"( {install} ) && echo {digest} > {marker}; fi && "
            f"{{ [ -x {venv}/bin/coord-agent ] || "
            f"{{ echo 'no coord-agent in {venv}/bin after the install' >&2; exit 1; }}; }}")


def start_script(remote_dir: str, venv: str, address: str, node_id: str) -> str:
    """Start the agent in a session of its own (its pid is its session and group id) that
    outlives this SSH session; its credentials arrive on stdin, never on a command line."""
    return (f"cd {shlex.quote(remote_dir)} && set -a && . /dev/stdin && set +a && "
            f"{{ setsid nohup {venv}/bin/coord-agent --coordinator {shlex.quote(address)} "
            f"--node-id {shlex.quote(node_id)} --workdir {shlex.quote(remote_dir + '/work')} "
            "> agent.log 2>&1 < /dev/null & } && echo $!")


def stop_script(pid: int, node_id: str, patience_s: float) -> str:
    """SIGTERM to the agent's process group (it stops its workers), then SIGKILL to its whole
    session (workers run in groups of their own inside it). Only if `pid` is still this node's
    agent: after a reboot the number may belong to anything."""
    polls = max(1, int(patience_s / 0.2))
    mine = shlex.quote(f"--node-id {node_id} ")
    return (f"tr '\\0' ' ' < /proc/{pid}/cmdline 2>/dev/null | grep -qF -- {mine} || exit 0; "
            f"kill -TERM -- -{pid} 2>/dev/null || exit 0; n=0; "
            f"while kill -0 {pid} 2>/dev/null && [ $n -lt {polls} ]; do sleep 0.2; n=$((n+1)); "
            f"done; pkill -KILL -s {pid} 2>/dev/null; true")


class Bootstrap:
    """One node on one host, step by step. `step` always says where it is."""

    def __init__(self, host: SshHost, node: NodeRecord, settings: SshSettings,
                 access: AgentAccess, wheel: Wheel):
        self.host, self.node, self.settings, self.access, self.wheel = (
            host, node, settings, access, wheel)
        self.step = "connect"

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.bootstrap_timeout_s
        try:
            async with asyncio.timeout_at(deadline):
                conn = await connect(self.host, self.settings.connect_timeout_s)
        except TimeoutError:
            raise self._late() from None
        async with conn:
            try:
                async with asyncio.timeout_at(deadline):
                    remote_dir = await self._prepare(conn)
                    venv = await self._install(conn, remote_dir)
                    pid = await self._start(conn, remote_dir, venv)
            except TimeoutError:
                raise self._late() from None
            await self._registered(conn, remote_dir, pid, deadline)

    def _late(self) -> HostError:
        return HostError(self.host, self.step, "did not finish within ssh.bootstrap_timeout_s "
                                               f"({self.settings.bootstrap_timeout_s:g} s)")

    async def _prepare(self, conn: asyncssh.SSHClientConnection) -> str:
        self.step = "prepare"
        base = shell_path(self.host.remote_dir or self.settings.remote_dir)
        remote_dir = (await run(conn, self.host, self.step,
                                f"mkdir -p {base}/work && cd {base} && pwd")).strip()
        self.node.provider_data.update(remote_dir=remote_dir, workdir=f"{remote_dir}/work")
        return remote_dir

    async def _install(self, conn: asyncssh.SSHClientConnection, remote_dir: str) -> str:
        self.step = "upload"
        wheel = f"{remote_dir}/dist/{self.wheel.filename}"
        await upload_bytes(conn, self.host, wheel, self.wheel.data)
        self.step = "install"
        venv = venv_path(self.settings, remote_dir)
        await run(conn, self.host, self.step,  # bounded by the bootstrap's deadline
                  install_script(self.settings, venv, wheel, self.wheel.digest), timeout_s=None)
        self.node.provider_data["venv"] = venv
        return venv

    async def _start(self, conn: asyncssh.SSHClientConnection, remote_dir: str,
                     venv: str) -> int:
        self.step = "start agent"
        env = "".join(f"{key}={shlex.quote(value)}\n"
                      for key, value in self.access.agent_env().items())
        out = await run(conn, self.host, self.step,
                        start_script(remote_dir, venv, self.access.address(), self.node.id),
                        stdin=env)
        pid = int(out.split()[-1])
        self.node.provider_data["pid"] = pid
        log.info("ssh.agent_started", node=self.node.id, host=self.host.name, pid=pid)
        return pid

    async def _registered(self, conn: asyncssh.SSHClientConnection, remote_dir: str, pid: int,
                          deadline: float) -> None:
        """The registry marks the node READY on the very record we were given."""
        self.step = "register"
        loop = asyncio.get_running_loop()
        next_check = loop.time() + ALIVE_CHECK_S
        while self.node.state == NodeState.JOINING:
            if loop.time() > deadline:
                raise HostError(self.host, self.step, "coord-agent did not register within "
                                f"{self.settings.bootstrap_timeout_s:g} s: can the host reach "
                                f"coordd at {self.access.address()}? "
                                f"{await self._log_tail(conn, remote_dir)}")
            if loop.time() > next_check:
                next_check = loop.time() + ALIVE_CHECK_S
                alive = await complete(conn, self.host, self.step, f"kill -0 {pid}")
                if alive.exit_status != 0 and self.node.state == NodeState.JOINING:
                    raise HostError(self.host, self.step, "coord-agent exited before it "
                                    f"registered. {await self._log_tail(conn, remote_dir)}")
            await asyncio.sleep(0.1)
        if self.node.state == NodeState.LOST:  # GONE: removed on purpose, nothing to report
            raise HostError(self.host, self.step, f"node {self.node.id} was marked lost before "
                            f"its agent registered. {await self._log_tail(conn, remote_dir)}")

    async def _log_tail(self, conn: asyncssh.SSHClientConnection, remote_dir: str) -> str:
        log_path = f"{remote_dir}/agent.log"
        result = await complete(conn, self.host, self.step, f"tail -n 20 {shlex.quote(log_path)}")
        return f"End of {log_path}: {tail(result.stdout or '')}"
