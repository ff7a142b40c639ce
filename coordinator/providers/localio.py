"""Node verbs for nodes that are directories and processes on this machine (the local
provider): exec through a subprocess, upload and download as file copies."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import structlog

from coordinator.providers.nodeio import CHUNK, ExecOutput, merged, node_path, path_error
from coordinator.providers.procs import signal_tree

log = structlog.get_logger("coordinator.providers.local")
# An abandoned command's pipes must close before its exit can be awaited; a descendant that
# escaped the kill and keeps them open is given up on after this long.
REAP_S = 5.0


async def exec_local(node_id: str, workdir: str, command: str) -> AsyncIterator[ExecOutput]:
    # As for workers: `python` means the node's environment (coord's interpreter).
    path = os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "")])
    try:
        proc = await asyncio.create_subprocess_exec(
            "bash", "-c", command, cwd=workdir, env={**os.environ, "PATH": path},
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, start_new_session=True)
    except OSError as exc:
        raise path_error(node_id, workdir, exc) from None
    try:
        async with contextlib.aclosing(merged(proc.stdout, proc.stderr)) as pieces:
            async for piece in pieces:
                yield piece
        code = await proc.wait()
        yield ExecOutput(exit_code=128 - code if code < 0 else code)  # shell convention
    finally:
        if proc.returncode is None:  # the caller went away: so does the command
            await _reap(node_id, proc)


async def _reap(node_id: str, proc: asyncio.subprocess.Process) -> None:
    """Kill the command and all it started, then wait for it. asyncio's wait() returns only
    once both pipes are closed, and a pipe whose reader stopped reading stays paused with
    data in it: drain them (discarding the output nobody wants any more) so they can close."""
    await asyncio.to_thread(signal_tree, proc.pid, signal.SIGKILL)
    try:
        async with asyncio.timeout(REAP_S):
            await asyncio.gather(_drain(proc.stdout), _drain(proc.stderr))
            await proc.wait()
    except TimeoutError:  # the process itself is gone; a stray holds its pipes
        log.warning("local.exec_pipes_held", node=node_id, pid=proc.pid)


async def _drain(stream: asyncio.StreamReader) -> None:
    while await stream.read(CHUNK):
        pass


async def upload_local(node_id: str, workdir: str, path: str,
                       chunks: AsyncIterator[bytes]) -> str:
    """Through NAME.partial, renamed at the end: the file appears whole or not at all."""
    target = node_path(workdir, path)
    partial = Path(f"{target}.partial")
    try:
        await asyncio.to_thread(Path(target).parent.mkdir, parents=True, exist_ok=True)
        if await asyncio.to_thread(os.path.isdir, target):
            raise IsADirectoryError(errno.EISDIR, "Is a directory")
        file = await asyncio.to_thread(open, partial, "wb")
    except OSError as exc:
        raise path_error(node_id, target, exc) from None
    try:
        try:
            async for data in chunks:  # the sender's trouble passes through as it is
                await _on_node(node_id, target, file.write, data)
        finally:
            await _on_node(node_id, target, file.close)  # flushes: may find a full disk too
        await _on_node(node_id, target, partial.replace, target)
    finally:  # any failure, the caller's cancellation included
        with contextlib.suppress(FileNotFoundError):
            await asyncio.to_thread(partial.unlink)
    return target


async def _on_node(node_id: str, path: str, operation, *args) -> None:
    """A file operation in a thread; its error (a full disk, a lost permission) as a typed
    error naming the node and the path."""
    try:
        await asyncio.to_thread(operation, *args)
    except OSError as exc:
        raise path_error(node_id, path, exc) from None


async def download_local(node_id: str, workdir: str, path: str) -> AsyncIterator[bytes]:
    source = node_path(workdir, path)
    try:
        file = await asyncio.to_thread(open, source, "rb")
    except OSError as exc:
        raise path_error(node_id, source, exc) from None
    try:
        while data := await asyncio.to_thread(file.read, CHUNK):
            yield data
    finally:
        await asyncio.to_thread(file.close)
