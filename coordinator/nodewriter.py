"""Node records reach SQLite in batches: every record changed while the event loop ran its
other callbacks is written in one transaction by a background flusher. `mark` never waits,
so no state change (a registration, a loss) waits for the disk, and a burst of thousands
costs a few transactions, not thousands. `durable` waits for the commit that holds the
record, for what promises durability (an ack)."""

from __future__ import annotations

import asyncio

import structlog

from coordinator.store import NodeRecord, Store

log = structlog.get_logger("coordinator.nodewriter")
RETRY_S = 0.5


class NodeWriter:
    def __init__(self, store: Store):
        self.store = store
        self._dirty: dict[str, NodeRecord] = {}
        self._committed: asyncio.Future | None = None  # resolved by the next batch's commit
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None

    def mark(self, node: NodeRecord) -> None:
        self._dirty[node.id] = node
        self._wake.set()
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def durable(self, *records: NodeRecord) -> None:
        for node in records:
            self.mark(node)
        if self._committed is None:
            self._committed = asyncio.get_running_loop().create_future()
        await asyncio.shield(self._committed)

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            await asyncio.sleep(0)  # what else this turn of the loop changes joins the batch
            self._wake.clear()
            await self._flush()

    async def _flush(self) -> None:
        batch, self._dirty = self._dirty, {}
        committed, self._committed = self._committed, None
        try:
            await self.store.save_nodes(list(batch.values()))
        except Exception as exc:  # the records stay in memory: try again, newer ones first
            log.exception("nodes.write_failed", nodes=len(batch))
            self._dirty = {**batch, **self._dirty}
            if committed and not committed.done():
                committed.set_exception(exc)
            await asyncio.sleep(RETRY_S)
            self._wake.set()
            return
        if committed and not committed.done():
            committed.set_result(None)

    async def close(self) -> None:
        """Write what is pending, then stop."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._dirty:
            await self._flush()
