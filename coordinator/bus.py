"""In-process publish/subscribe per job: live events and log lines for watchers.

History lives in the store; a watcher subscribes first, then reads history, then drops
live items it already saw (by sequence number), so nothing is missed or shown twice.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import AsyncIterator
from contextlib import contextmanager
from typing import Any

CLOSED = object()


class Bus:
    def __init__(self) -> None:
        self._subscribers: dict[tuple[str, str], set[asyncio.Queue]] = defaultdict(set)

    def publish(self, topic: str, job_id: str, item: Any) -> None:
        for queue in self._subscribers.get((topic, job_id), ()):
            queue.put_nowait(item)

    def close(self, topic: str, job_id: str) -> None:
        """Tell every subscriber that no more items will come (the job ended)."""
        self.publish(topic, job_id, CLOSED)

    @contextmanager
    def subscribe(self, topic: str, job_id: str):
        queue: asyncio.Queue = asyncio.Queue()
        key = (topic, job_id)
        self._subscribers[key].add(queue)
        try:
            yield queue
        finally:
            self._subscribers[key].discard(queue)
            if not self._subscribers[key]:
                del self._subscribers[key]


async def drain(queue: asyncio.Queue) -> AsyncIterator[Any]:
    """Items from a subscription until the topic is closed."""
    while (item := await queue.get()) is not CLOSED:
        yield item
