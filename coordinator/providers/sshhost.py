"""Talking to one configured host over SSH (asyncssh): connect, run a step, read a file,
with every failure turned into an error that names the host and the step."""

from __future__ import annotations

import asyncio
import posixpath
import shlex
import signal

import asyncssh

from contract.errors import ProviderError
from coordinator.settings import SshHost

TAIL_CHARS = 800
# A host that stops answering (powered off, cut off) is noticed within about
# KEEPALIVE_S * KEEPALIVE_COUNT seconds instead of TCP's ~15 minutes: every operation on the
# connection then fails with a HostError.
KEEPALIVE_S = 5.0
KEEPALIVE_COUNT = 3
# The most a short remote command (a check, a stop) may take; long ones (the install) pass
# their own bound.
COMMAND_TIMEOUT_S = 60.0


class HostError(ProviderError):
    """A step on an ssh host failed; the message says which host, which step, and why."""

    def __init__(self, host: SshHost, step: str, detail: str):
        super().__init__(f"ssh host {host.name} ({describe(host)}): {step} failed: {detail}")
        self.step = step


def describe(host: SshHost) -> str:
    return f"{host.user + '@' if host.user else ''}{host.address}:{host.port}"


def shell_path(path: str) -> str:
    """`path` quoted for a POSIX shell, with a leading `~` left to the host to expand."""
    if path == "~" or path.startswith("~/"):
        return '"$HOME"' + (f"/{shlex.quote(path[2:])}" if path[2:] else "")
    return shlex.quote(path)


def tail(text: str | bytes, chars: int = TAIL_CHARS) -> str:
    if isinstance(text, bytes):
        text = text.decode(errors="replace")
    text = text.strip()
    return ("..." + text[-chars:]) if len(text) > chars else text or "(no output)"


async def connect(host: SshHost, timeout: float, step: str = "connect"
                  ) -> asyncssh.SSHClientConnection:
    options: dict = {"port": host.port, "connect_timeout": timeout,
                     "keepalive_interval": KEEPALIVE_S, "keepalive_count_max": KEEPALIVE_COUNT}
    if host.user:  # else asyncssh's default, the user coordd runs as (None is refused)
        options["username"] = host.user
    if host.key_file:
        try:
            options["client_keys"] = [await asyncio.to_thread(asyncssh.read_private_key,
                                                              str(host.key_file))]
        except (OSError, asyncssh.KeyImportError) as exc:
            raise HostError(host, step, f"cannot read key_file {host.key_file}: {exc}") from None
    if not host.check_host_key:
        options["known_hosts"] = None
    elif host.known_hosts:
        options["known_hosts"] = str(host.known_hosts)
    try:
        return await asyncssh.connect(host.address, **options)
    except asyncssh.PermissionDenied:
        key = host.key_file or "~/.ssh/id_*"
        raise HostError(host, step, f"the host refused the key {key} for user "
                                    f"{host.user or 'coordd runs as'}") from None
    except asyncssh.HostKeyNotVerifiable as exc:
        raise HostError(host, step, f"its host key is not trusted ({exc}): add it to "
                                    f"{host.known_hosts or '~/.ssh/known_hosts'}") from None
    except (OSError, TimeoutError, asyncssh.Error) as exc:
        raise HostError(host, step, f"unreachable: {exc or type(exc).__name__}") from None


async def complete(conn: asyncssh.SSHClientConnection, host: SshHost, step: str, command: str,
                   stdin: str | None = None, timeout_s: float | None = COMMAND_TIMEOUT_S
                   ) -> asyncssh.SSHCompletedProcess:
    """Run a shell command to its end within `timeout_s` (None: no bound of its own)."""
    try:
        async with asyncio.timeout(timeout_s):
            return await conn.run(command, input=stdin, check=False)
    except TimeoutError:
        raise HostError(host, step, f"no answer within {timeout_s:g} s") from None
    except (OSError, asyncssh.Error) as exc:
        raise HostError(host, step, f"connection broke: {exc}") from None


async def run(conn: asyncssh.SSHClientConnection, host: SshHost, step: str, command: str,
              stdin: str | None = None, timeout_s: float | None = COMMAND_TIMEOUT_S) -> str:
    """Run a shell command; its stdout, or a HostError with the end of its output."""
    result = await complete(conn, host, step, command, stdin, timeout_s)
    if result.exit_status != 0:
        raise HostError(host, step, f"exit status {exit_code(result, host, step)}: "
                                    f"{tail(result.stderr or result.stdout or '')}")
    return str(result.stdout or "")


def exit_code(process, host: SshHost, step: str) -> int:
    """The shell's convention: the exit status, or 128+N when signal N ended the command.
    Neither (the connection dropped before the command ended) is the host's failure."""
    if process.exit_status is not None and process.exit_status >= 0:
        return process.exit_status
    if not process.exit_signal:
        raise HostError(host, step, f"the connection to {host.name} broke before the command "
                                    "ended")
    try:
        return 128 + signal.Signals[f"SIG{process.exit_signal[0]}"].value
    except KeyError:
        return 255


async def upload_bytes(conn: asyncssh.SSHClientConnection, host: SshHost, path: str,
                       data: bytes) -> None:
    """Write `data` to `path` unless a file of that size is there (names carry digests)."""
    try:
        async with conn.start_sftp_client() as sftp:
            if await sftp.exists(path) and (await sftp.stat(path)).size == len(data):
                return
            await sftp.makedirs(posixpath.dirname(path), exist_ok=True)
            partial = f"{path}.partial"
            async with sftp.open(partial, "wb") as file:
                await file.write(data)
            await sftp.posix_rename(partial, path)
    except (OSError, asyncssh.Error) as exc:
        raise HostError(host, "upload", f"{path}: {exc}") from None
