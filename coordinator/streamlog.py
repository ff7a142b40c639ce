"""Agent streams that end abnormally, logged without flooding: a burst of 10,000 agents
reconnecting at once (a coordd restart, a network blip) may see thousands of failed
attempts, and each must leave a trace without 10,000 log lines.

The first `burst` failures of a window are logged one by one (`agent.stream_failed`, with
the cause, the node, the phase and the peer); the rest are counted, and one summary per
window (`agent.stream_failures`: how many, by cause) says what was left out. Every failure
also counts in `coord_agent_stream_failures_total{cause}`.
"""

from __future__ import annotations

import asyncio
import collections
import time

import structlog
from prometheus_client import Counter

log = structlog.get_logger("coordinator.streams")
WINDOW_S = 10.0
BURST = 20


class StreamFailures:
    def __init__(self, counter: Counter, window_s: float = WINDOW_S, burst: int = BURST):
        self.counter, self.window_s, self.burst = counter, window_s, burst
        self._window_start = -window_s
        self._logged = 0
        self._left_out: collections.Counter[str] = collections.Counter()
        self._flush: asyncio.TimerHandle | None = None

    def record(self, cause: str, **fields) -> None:
        self.counter.labels(cause).inc()
        now = time.monotonic()
        if now - self._window_start >= self.window_s and not self._left_out:
            self._window_start, self._logged = now, 0
        if self._logged < self.burst:
            self._logged += 1
            log.warning("agent.stream_failed", cause=cause, **fields)
            return
        self._left_out[cause] += 1
        if self._flush is None:
            delay = max(0.0, self._window_start + self.window_s - now)
            self._flush = asyncio.get_running_loop().call_later(delay, self.summarize)

    def summarize(self) -> None:
        """One line for the failures of the window that were not logged one by one."""
        self._flush = None
        if self._left_out:
            log.warning("agent.stream_failures", more=sum(self._left_out.values()),
                        by_cause=dict(self._left_out), logged=self._logged,
                        window_s=self.window_s)
        self._left_out.clear()
        self._window_start, self._logged = time.monotonic(), 0
