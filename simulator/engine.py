"""A discrete-event engine on a simulated clock: a heap of timed callbacks.

No sockets, processes or sleeps: `run` pops the earliest batch of callbacks and jumps the
clock to its time. Callbacks due at the same instant run together, so a policy can react
once to everything that happened at that instant (a thousand workers exiting together).
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable
from typing import Any


class Timer:
    """A scheduled callback; `cancel` keeps it in the heap but makes it a no-op."""

    __slots__ = ("time", "fn", "args", "cancelled")

    def __init__(self, time: float, fn: Callable[..., Any], args: tuple) -> None:
        self.time, self.fn, self.args, self.cancelled = time, fn, args, False

    def cancel(self) -> None:
        self.cancelled = True


class Engine:
    def __init__(self) -> None:
        self.now = 0.0
        self._heap: list[tuple[float, int, Timer]] = []
        self._order = itertools.count()
        self.stopped = False

    def at(self, time: float, fn: Callable[..., Any], *args: Any) -> Timer:
        """Run fn(*args) at `time` (never in the past)."""
        timer = Timer(max(time, self.now), fn, args)
        heapq.heappush(self._heap, (timer.time, next(self._order), timer))
        return timer

    def after(self, delay: float, fn: Callable[..., Any], *args: Any) -> Timer:
        return self.at(self.now + delay, fn, *args)

    def stop(self) -> None:
        self.stopped = True

    def run(self, until: float, after_batch: Callable[[], None] | None = None) -> None:
        """Run callbacks in time order until `until`, `stop()` or an empty heap; after each
        instant's batch, `after_batch` (the policy's decision step)."""
        while self._heap and not self.stopped:
            time = self._heap[0][0]
            if time > until:
                break
            self.now = time
            while self._heap and self._heap[0][0] == time and not self.stopped:
                timer = heapq.heappop(self._heap)[2]
                if not timer.cancelled:
                    timer.fn(*timer.args)
            if after_batch is not None and not self.stopped:
                after_batch()
