"""The client's side of `coord upload` and `coord download`: local files read and written in
chunks (never whole in memory), with `cp`'s rules for where a file lands."""

from __future__ import annotations

import asyncio
import contextlib
import posixpath
from collections.abc import AsyncIterator
from pathlib import Path
from typing import BinaryIO

from contract.errors import InvalidSpec
from coord.v1 import jobs_pb2

CHUNK = 1 << 20  # the server's chunk size too


async def open_source(src: str | Path) -> BinaryIO:
    """The local file to upload, opened; an error naming it if it cannot be read."""
    path = Path(src)
    try:
        if await asyncio.to_thread(path.is_dir):
            raise InvalidSpec(f"{src}: is a directory (upload copies one file)")
        return await asyncio.to_thread(open, path, "rb")
    except OSError as exc:
        raise InvalidSpec(f"{src}: cannot read: {exc.strerror or exc}") from None


def remote_target(src: str | Path, dst: str) -> str:
    """A destination ending in '/' is a directory: the file keeps its name there."""
    return posixpath.join(dst, Path(src).name) if dst.endswith("/") else dst


async def upload_chunks(file: BinaryIO, node: str, dst: str) -> AsyncIterator[jobs_pb2.FileChunk]:
    """The upload stream: the first chunk names the node and the path, even for an empty file.
    The caller closes `file` (the call may fail before the stream is read at all)."""
    data = await asyncio.to_thread(file.read, CHUNK)
    yield jobs_pb2.FileChunk(node_id=node, path=dst, data=data)
    while data := await asyncio.to_thread(file.read, CHUNK):
        yield jobs_pb2.FileChunk(data=data)


def local_target(src: str, dst: str | Path) -> Path:
    """An existing directory (or a path ending in '/') receives the file under its name."""
    path = Path(dst)
    if str(dst).endswith("/") or path.is_dir():
        return path / posixpath.basename(src.rstrip("/"))
    return path


async def write_atomically(target: Path, chunks: AsyncIterator[jobs_pb2.FileChunk]) -> int:
    """Write the chunks to `target` through a temporary file: whole, or not at all."""
    partial = target.with_name(target.name + ".partial")
    try:
        file = await asyncio.to_thread(open, partial, "wb")
    except OSError as exc:
        raise InvalidSpec(f"{target}: cannot write: {exc.strerror or exc}") from None
    size = 0
    try:
        with file:
            async for chunk in chunks:
                await asyncio.to_thread(file.write, chunk.data)
                size += len(chunk.data)
        await asyncio.to_thread(partial.replace, target)
    finally:
        with contextlib.suppress(FileNotFoundError):
            await asyncio.to_thread(partial.unlink)
    return size
