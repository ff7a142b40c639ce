"""Log lines reach the store in batches: the lines of every agent message that arrives while
the event loop runs its other callbacks are written, each message marked applied on its node,
in one transaction. Thousands of agents printing at once then cost a few transactions, not
one each, and an agent's stream does not wait for the disk before reading its next message
(a heartbeat must never queue behind a write): only the message's ack does (see service)."""

from __future__ import annotations

import asyncio
import dataclasses

from coordinator.store import LogRecord, NodeRecord, Store


@dataclasses.dataclass
class _Message:
    node: NodeRecord
    lines: list[LogRecord]
    seq: int
    stored: asyncio.Future


class LogWriter:
    def __init__(self, store: Store):
        self.store = store
        self._queue: list[_Message] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._closing = False

    async def append(self, node: NodeRecord, lines: list[LogRecord],
                     seq: int) -> list[LogRecord]:
        """The lines as stored (with their ids), once committed with `node.applied_seq` = `seq`.
        A message already applied (a replay racing its original) stores nothing."""
        message = _Message(node, lines, seq, asyncio.get_running_loop().create_future())
        self._queue.append(message)
        self._wake.set()
        if self._closing:  # a message in the last moments of a stop: written on its own
            await self._flush()
        elif self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())
        return await asyncio.shield(message.stored)

    async def _run(self) -> None:
        while not (self._closing and not self._queue):
            await self._wake.wait()
            await asyncio.sleep(0)  # what else this turn of the loop brings joins the batch
            self._wake.clear()
            await self._flush()

    async def _flush(self) -> None:
        batch, self._queue = self._queue, []
        fresh, seen = [], set()
        for message in batch:
            key = (message.node.id, message.seq)
            if message.seq and (message.seq <= message.node.applied_seq or key in seen):
                message.stored.set_result([])
            else:
                seen.add(key)
                fresh.append(message)
        if not fresh:
            return
        try:
            stored = await self.store.append_logs([(m.lines, m.node.id, m.seq) for m in fresh])
        except Exception as exc:  # each sender's stream fails: its agent sends them again
            for message in fresh:
                message.stored.set_exception(exc)
            return
        for message, records in zip(fresh, stored, strict=True):
            message.node.applied_seq = max(message.node.applied_seq, message.seq)
            message.stored.set_result(records)

    async def close(self) -> None:
        """Write what is queued (a write under way is finished, not cut), then stop."""
        self._closing = True
        self._wake.set()
        if self._task is not None:
            await self._task
