"""Messages from this agent to the coordinator, kept across reconnects.

Log lines are numbered per worker (so order within a rank is checkable) and sent in
batches; a worker's state change flushes its pending lines first, so the coordinator has
a worker's last words before it hears that it exited.
"""

from __future__ import annotations

import asyncio
import secrets
from collections import defaultdict

from coord.v1 import agent_pb2, types_pb2

BATCH_LINES = 256
FLUSH_INTERVAL_S = 0.05


class Outbox:
    """Tracked messages stay here until coordd acknowledges them, and are sent again after a
    reconnect: a coordd crash loses nothing it had not made durable."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[agent_pb2.AgentMessage] = asyncio.Queue()
        self.incarnation = secrets.token_hex(8)
        self._lines: list[types_pb2.LogLine] = []
        self._seq: dict[tuple[str, int, int], int] = defaultdict(int)
        self._unacked: dict[int, agent_pb2.AgentMessage] = {}
        self._next = 0

    def put(self, message: agent_pb2.AgentMessage, tracked: bool = True) -> None:
        if not tracked:  # heartbeats: worthless once late
            self.queue.put_nowait(message)
            return
        self.flush()
        self._track(message)

    def _track(self, message: agent_pb2.AgentMessage) -> None:
        self._next += 1
        message.seq = self._next
        self._unacked[message.seq] = message
        self.queue.put_nowait(message)

    def ack(self, upto: int) -> None:
        for seq in [s for s in self._unacked if s <= upto]:
            del self._unacked[seq]

    def rewind(self) -> None:
        """Before a new stream: everything not yet acknowledged, in order, goes first."""
        self.flush()
        self.queue = asyncio.Queue()
        for message in self._unacked.values():
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
            self._track(agent_pb2.AgentMessage(logs=batch))

    async def drained(self, timeout: float) -> bool:
        """Wait (bounded) until coordd has acknowledged every tracked message."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self._unacked and loop.time() < deadline:
            await asyncio.sleep(0.02)
        return not self._unacked

    async def flush_periodically(self) -> None:
        while True:
            await asyncio.sleep(FLUSH_INTERVAL_S)
            self.flush()
