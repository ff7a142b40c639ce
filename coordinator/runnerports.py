"""coordd's implementations of the reconciler's ports (coordinator/reconciler/ports.py)."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence

from contract.events import Payload
from contract.spec import JobSpec
from coordinator.bus import Bus
from coordinator.launching import Launcher
from coordinator.metrics import Metrics
from coordinator.nodes import NodeRegistry
from coordinator.quorums import Quorums
from coordinator.reconciler import effects as fx
from coordinator.reconciler.journal import Entry
from coordinator.reconciler.ports import Ports
from coordinator.reconciler.view import JobView, NodeView
from coordinator.settings import CoorddSettings
from coordinator.store import EventRecord, JobRecord, LogRecord, Store


@dataclasses.dataclass(frozen=True)
class StoreAdapter:
    store: Store

    async def commit(self, job: JobRecord, entries: Sequence[Entry],
                     intents: Sequence[fx.Effect]) -> tuple[list[EventRecord], list[int]]:
        return await self.store.commit(job, [(e.kind, e.message, e.payload) for e in entries],
                                       [fx.dump(i) for i in intents])

    async def intents_done(self, intent_ids: list[int]) -> None:
        await self.store.intents_done(intent_ids)

    async def pending_intents(self, job_id: str) -> list[tuple[int, fx.Effect]]:
        return [(i, fx.load(kind, data))
                for i, kind, data in await self.store.pending_intents(job_id)]

    async def append_event(self, job_id: str, kind: str, generation: int, message: str,
                           payload: Payload) -> EventRecord:
        return await self.store.append_event(job_id, kind, generation, message, payload)

    async def events_after(self, job_id: str, seq: int = 0) -> list[EventRecord]:
        return await self.store.events_after(job_id, seq)

    async def get_job(self, ref: str) -> JobRecord:
        return await self.store.get_job(ref)

    async def read_logs(self, job_id: str, after_id: int = 0, node_id: str = "",
                        rank: int | None = None, tail: int = 0) -> list[LogRecord]:
        return await self.store.read_logs(job_id, after_id, node_id, rank, tail)


@dataclasses.dataclass(frozen=True)
class AgentsAdapter:
    nodes: NodeRegistry
    launcher: Launcher

    def master(self, node: NodeView) -> tuple[str, int]:
        # The port the node reported free most recently (each heartbeat refreshes it).
        return node.host, self.nodes.free_port(node.id) or node.free_port

    async def launch(self, job: JobRecord, spec: JobSpec, view: JobView, worker_generation: int,
                     node_id: str, master: tuple[str, int]) -> None:
        await self.launcher.launch(job, spec, view, worker_generation, node_id, master)

    async def stop_workers(self, node_id: str, job_id: str, epoch: int, reason: str,
                           grace_s: float | None = None) -> None:
        await self.nodes.stop_workers(node_id, job_id, epoch, reason, grace_s)

    def tell_reformed(self, node_id: str, job_id: str, epoch: int,
                      dropped: Sequence[str]) -> None:
        self.nodes.tell_reformed(node_id, job_id, epoch, list(dropped))

    async def release(self, node_id: str, reason: str) -> None:
        await self.nodes.release(node_id, reason)


@dataclasses.dataclass(frozen=True)
class ProviderAdapter:
    nodes: NodeRegistry
    retry_s: float

    async def acquire(self, job: JobRecord, spec: JobSpec, count: int) -> list[NodeView]:
        return await self.nodes.acquire(job, spec, count)


class WallClock:
    def now(self) -> float:
        return time.time()


def coordd_ports(store: Store, nodes: NodeRegistry, launcher: Launcher, quorums: Quorums,
                 metrics: Metrics, bus: Bus, settings: CoorddSettings) -> Ports:
    return Ports(store=StoreAdapter(store), agents=AgentsAdapter(nodes, launcher),
                 provider=ProviderAdapter(nodes, settings.provider_retry_s), quorum=quorums,
                 clock=WallClock(), metrics=metrics, feed=bus)
