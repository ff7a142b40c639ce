"""Retention of dead nodes: a LOST or GONE node is removed `node_retention_s` after it died,
from the database and from the registry, unless a job that has not ended still counts it as
a member; the runners of the jobs that still hold it in their view are told
(`NodesForgotten`). Without it every node ever lost stays a row for good (thousands after a
day of spot churn or a load test).

It runs as a task of its own on a slow clock: never on a heartbeat's or a registration's
path, and in batches of one transaction each, so a sweep of thousands costs a few writes.
"""

from __future__ import annotations

import asyncio
import collections
import time

import structlog

from contract.states import NodeState
from coordinator.nodes import NodeRegistry
from coordinator.settings import CoorddSettings
from coordinator.store import Store

log = structlog.get_logger("coordinator.retention")
BATCH = 500
MIN_INTERVAL_S, MAX_INTERVAL_S = 0.2, 60.0


def sweep_interval(retention_s: float) -> float:
    """How often to look: a quarter of the retention, within bounds, so a node is removed
    at most a quarter late (and at most a minute)."""
    return min(MAX_INTERVAL_S, max(MIN_INTERVAL_S, retention_s / 4))


class NodeRetention:
    def __init__(self, registry: NodeRegistry, store: Store, settings: CoorddSettings):
        self.registry, self.store, self.retention_s = registry, store, settings.node_retention_s

    async def run(self) -> None:
        while True:
            await asyncio.sleep(sweep_interval(self.retention_s))
            try:
                await self.sweep(time.time())
            except Exception:  # a database hiccup: the next sweep tries again
                log.exception("nodes.retention_failed")

    async def sweep(self, now: float) -> int:
        """Remove the nodes dead since before `now - node_retention_s`; how many."""
        before, after, removed = now - self.retention_s, "", 0
        members: set[str] | None = None
        while batch := await self.store.dead_nodes(before, after, BATCH):
            after = batch[-1][0]
            members = await self.store.live_members() if members is None else members
            removable = [(node_id, job_id) for node_id, job_id in batch
                         if node_id not in members and self._dead_here(node_id)]
            gone = set(await self.store.delete_dead_nodes([n for n, _ in removable], before))
            by_job: dict[str, list[str]] = collections.defaultdict(list)
            for node_id, job_id in removable:
                if node_id in gone:
                    by_job[job_id].append(node_id)
            self.registry.forget(by_job)
            removed += len(gone)
            if len(batch) < BATCH:
                break
        if removed:
            log.info("nodes.removed", count=removed, retention_s=self.retention_s)
        return removed

    def _dead_here(self, node_id: str) -> bool:
        """Not registered again in this coordd's memory (its row may not say so yet)."""
        node = self.registry.nodes.get(node_id)
        return node is None or node.state in (NodeState.LOST, NodeState.GONE)
