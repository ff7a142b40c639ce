"""What every provider's node verbs (exec, upload, download) share: where a path on a node
points, how a command's two output streams become one ordered stream, and how a file error
becomes a typed error that names the node and the path."""

from __future__ import annotations

import asyncio
import dataclasses
import errno
import posixpath
from collections.abc import AsyncIterator
from typing import Protocol

from contract.errors import (Conflict, CoordError, InvalidSpec, NotFound, PathDenied,
                             ResourceExhausted)

CHUNK = 1 << 20  # one gRPC message of file data, both ways
PIECE = CHUNK // 16  # the most of a command's output one ExecOutput carries
MAX_PATH = 4096


@dataclasses.dataclass(frozen=True)
class ExecOutput:
    """A piece of a command's output on a node; the last one carries its exit code."""

    stdout: bytes = b""
    stderr: bytes = b""
    exit_code: int | None = None


def node_path(workdir: str, path: str, field: str = "path") -> str:
    """`path` on the node: absolute as given, relative inside the node's work directory."""
    if not path or len(path) > MAX_PATH or "\x00" in path:
        raise InvalidSpec(f"field '{field}': give a file path on the node (at most "
                          f"{MAX_PATH} characters)")
    return posixpath.normpath(posixpath.join(workdir, path))


def path_error(node_id: str, path: str, exc: OSError) -> CoordError:
    """A file error on a node as coord's typed error, naming both."""
    where = f"node {node_id}: {path}"
    match exc.errno:
        case errno.ENOENT:
            return NotFound(f"{where}: no such file or directory")
        case errno.EISDIR:
            return InvalidSpec(f"{where}: is a directory (give a file)")
        case errno.ENOTDIR:
            return InvalidSpec(f"{where}: a parent of it is not a directory")
        case errno.EACCES | errno.EPERM:
            return PathDenied(f"{where}: permission denied")
        case errno.ENOSPC | errno.EDQUOT:
            return ResourceExhausted(f"{where}: {exc.strerror or 'no space left'}")
    return Conflict(f"{where}: {exc.strerror or exc}")


class Readable(Protocol):
    async def read(self, n: int = -1) -> bytes: ...


async def merged(stdout: Readable, stderr: Readable) -> AsyncIterator[ExecOutput]:
    """Both output streams of a process, each piece as soon as it arrives. One read is in
    flight per stream (back-pressure, and nothing buffered that closing could block on); a
    read's error ends the stream with it; closing the stream cancels the reads."""
    reads: dict[asyncio.Future[bytes], tuple[Readable, str]] = {}

    def read(reader: Readable, name: str) -> None:
        reads[asyncio.ensure_future(reader.read(PIECE))] = (reader, name)

    read(stdout, "stdout")
    read(stderr, "stderr")
    try:
        while reads:
            done, _ = await asyncio.wait(reads, return_when=asyncio.FIRST_COMPLETED)
            for finished in done:
                reader, name = reads.pop(finished)
                if data := finished.result():  # empty at end of stream
                    read(reader, name)
                    yield ExecOutput(**{name: data})
    finally:
        for pending in reads:
            pending.cancel()
        await asyncio.gather(*reads, return_exceptions=True)
