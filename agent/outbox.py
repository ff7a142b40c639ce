"""Messages from this agent to the coordinator, kept across reconnects.

Log lines are numbered per worker (so order within a rank is checkable) and sent in
batches; a worker's state change flushes its pending lines first, so the coordinator has
a worker's last words before it hears that it exited.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict

from coord.v1 import agent_pb2, types_pb2

BATCH_LINES = 256
FLUSH_INTERVAL_S = 0.05


class Outbox:
    def __init__(self) -> None:
        self.queue: asyncio.Queue[agent_pb2.AgentMessage] = asyncio.Queue()
        self._lines: list[types_pb2.LogLine] = []
        self._seq: dict[tuple[str, int, int], int] = defaultdict(int)

    def put(self, message: agent_pb2.AgentMessage) -> None:
        self.flush()
        self.queue.put_nowait(message)

    def log(self, line: types_pb2.LogLine) -> None:
        key = (line.job_id, line.generation, line.rank)
        self._seq[key] += 1
        line.seq = self._seq[key]
        self._lines.append(line)
        if len(self._lines) >= BATCH_LINES:
            self.flush()

    def flush(self) -> None:
        if self._lines:
            batch = agent_pb2.LogBatch(lines=self._lines)
            self._lines = []
            self.queue.put_nowait(agent_pb2.AgentMessage(logs=batch))

    async def drained(self, timeout: float) -> bool:
        """Wait (bounded) until the stream has taken every queued message."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not self.queue.empty() and loop.time() < deadline:
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.05)  # the last one taken is on its way
        return self.queue.empty()

    async def flush_periodically(self) -> None:
        while True:
            await asyncio.sleep(FLUSH_INTERVAL_S)
            self.flush()
