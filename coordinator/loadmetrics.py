"""Prometheus figures of coordd's own load: database commits and their time, event-loop lag,
connected agents and the gap between a node's heartbeats (how late they arrive)."""

from __future__ import annotations

import asyncio
import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine

LAG_PROBE_S = 0.25
FAST = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)


class LoadMetrics:
    def __init__(self, registry: CollectorRegistry):
        self.commit = Histogram("coord_db_commit_seconds", "SQLite commit time",
                                buckets=FAST, registry=registry)
        self.loop_lag = Histogram("coord_event_loop_lag_seconds",
                                  "How late a timer on coordd's event loop fires",
                                  buckets=FAST, registry=registry)
        self.agents = Gauge("coord_connected_agents", "Agent streams open now",
                            registry=registry)
        self.heartbeat_gap = Histogram("coord_heartbeat_gap_seconds",
                                       "Time between two heartbeats of one node",
                                       buckets=(0.5, 0.9, 1, 1.1, 1.25, 1.5, 2, 3, 5, 10),
                                       registry=registry)
        self.stream_failures = Counter("coord_agent_stream_failures",
                                       "Agent streams that ended abnormally, by cause",
                                       ["cause"], registry=registry)

    def watch_commits(self, engine: AsyncEngine) -> None:
        """Times every transaction's COMMIT: from the commit call until its connection is
        back in the pool (SQLAlchemy has no after-commit event on a connection)."""
        sync = engine.sync_engine

        def committing(conn) -> None:
            conn.info["coord_commit"] = time.perf_counter()

        def returned(_dbapi, record) -> None:
            if (started := record.info.pop("coord_commit", None)) is not None:
                self.commit.observe(time.perf_counter() - started)

        event.listen(sync, "commit", committing)
        event.listen(sync.pool, "checkin", returned)

    async def watch_loop(self) -> None:
        """Sleeps a fixed time over and over; how much later it wakes is the loop's lag."""
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            await asyncio.sleep(LAG_PROBE_S)
            self.loop_lag.observe(max(0.0, loop.time() - started - LAG_PROBE_S))
