"""A loopback stand-in for the job's quorum service (torchft Lighthouse) that can move.

torchft's manager takes the Lighthouse's address once, when it is made. On PostgreSQL coordd
runs the Lighthouse beside the leading coordd (coordinator/quorum.py), so after a failover to
a coordd on another host it runs somewhere else. The manager therefore talks to this relay,
which forwards each connection to wherever the Lighthouse runs now. When coordd names a new
place (through the worker's lifeline) the relay cuts the connections it holds, and torchft's
quorum retries (TORCHFT_QUORUM_RETRIES) come back through it to the new Lighthouse.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
from urllib.parse import urlsplit

from .logs import get_logger

log = get_logger(__name__)
CONNECT_TIMEOUT_S = 2.0
CHUNK = 65536


def _endpoint(address: str) -> tuple[str, int]:
    """'http://host:port' (torchft's form) or 'host:port' -> (host, port)."""
    parts = urlsplit(address if "//" in address else f"//{address}")
    if not parts.hostname or not parts.port:
        raise ValueError(f"TORCHFT_LIGHTHOUSE: {address!r} is not HOST:PORT or http://HOST:PORT")
    return parts.hostname, parts.port


class Relay:
    """Listens on 127.0.0.1 (a port of its own) in a thread of its own."""

    def __init__(self, target: str) -> None:
        self._target = _endpoint(target)
        self._open: set[asyncio.StreamWriter] = set()
        self._loop = asyncio.new_event_loop()
        bound: concurrent.futures.Future[int] = concurrent.futures.Future()
        threading.Thread(target=self._run, args=(bound,), name="coord-lighthouse-relay",
                         daemon=True).start()
        self.port = bound.result(timeout=30)

    @property
    def address(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def point(self, target: str) -> None:
        """Forward to `target` from now on (any thread)."""
        try:
            endpoint = _endpoint(target)
        except ValueError as exc:
            log.warning("lighthouse_not_moved", error=str(exc))
            return
        self._loop.call_soon_threadsafe(self._move, endpoint)

    def _move(self, target: tuple[str, int]) -> None:
        if target == self._target:
            return
        log.info("lighthouse_moved", old=f"{self._target[0]}:{self._target[1]}",
                 new=f"{target[0]}:{target[1]}", cut=len(self._open) // 2)
        self._target = target
        for writer in list(self._open):
            writer.close()

    def _run(self, bound: concurrent.futures.Future[int]) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            server = self._loop.run_until_complete(
                asyncio.start_server(self._forward, "127.0.0.1", 0))
        except OSError as exc:
            bound.set_exception(exc)
            return
        bound.set_result(server.sockets[0].getsockname()[1])
        self._loop.run_forever()

    async def _forward(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            far_reader, far_writer = await asyncio.wait_for(
                asyncio.open_connection(*self._target), CONNECT_TIMEOUT_S)
        except (OSError, TimeoutError):  # not up (yet): torchft retries
            writer.close()
            return
        pair = (writer, far_writer)
        self._open.update(pair)
        pumps = [asyncio.ensure_future(_pump(reader, far_writer)),
                 asyncio.ensure_future(_pump(far_reader, writer))]
        try:
            await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in pumps:
                task.cancel()
            for side in pair:
                self._open.discard(side)
                side.close()


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(OSError, asyncio.IncompleteReadError):
        while data := await reader.read(CHUNK):
            writer.write(data)
            await writer.drain()
