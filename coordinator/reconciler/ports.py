"""The narrow interface through which a job's runner reaches the world: one Protocol per port.

coordd plugs in its store, node registry, providers and metrics (coordinator/jobs.py); a test
or a simulator can plug in fakes. The runner never sees the job manager itself.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, Protocol

from contract.events import Payload
from contract.spec import JobSpec
from contract.states import JobState
from coordinator.reconciler.effects import Effect
from coordinator.reconciler.journal import Entry
from coordinator.reconciler.view import JobView, NodeView
from coordinator.store import EventRecord, JobRecord, LogRecord


class StorePort(Protocol):
    async def commit(self, job: JobRecord, entries: Sequence[Entry],
                     intents: Sequence[Effect]) -> tuple[list[EventRecord], list[int]]:
        """Save the job row, append the events and record the intents, in one transaction."""

    async def intents_done(self, intent_ids: list[int]) -> None:
        """Mark performed intents done, in one transaction."""

    async def pending_intents(self, job_id: str) -> list[tuple[int, Effect]]: ...

    async def append_event(self, job_id: str, kind: str, generation: int, message: str,
                           payload: Payload) -> EventRecord: ...

    async def events_after(self, job_id: str, seq: int = 0) -> list[EventRecord]: ...

    async def get_job(self, ref: str) -> JobRecord: ...

    async def read_logs(self, job_id: str, after_id: int = 0, node_id: str = "",
                        rank: int | None = None, tail: int = 0) -> list[LogRecord]: ...


class AgentsPort(Protocol):
    def master(self, node: NodeView) -> tuple[str, int]:
        """The rendezvous address of a generation whose first member is `node`."""

    async def launch(self, job: JobRecord, spec: JobSpec, view: JobView, worker_generation: int,
                     node_id: str, master: tuple[str, int]) -> None: ...

    async def stop_workers(self, node_id: str, job_id: str, epoch: int, reason: str,
                           grace_s: float | None = None) -> None: ...

    def tell_reformed(self, node_id: str, job_id: str, epoch: int,
                      dropped: Sequence[str]) -> None: ...

    async def release(self, node_id: str, reason: str) -> None: ...


class ProviderPort(Protocol):
    retry_s: float

    async def acquire(self, job: JobRecord, spec: JobSpec, count: int) -> list[NodeView]: ...


class QuorumPort(Protocol):
    async def stop(self, job_id: str) -> None: ...


class ClockPort(Protocol):
    def now(self) -> float: ...


class MetricsPort(Protocol):
    def job_transition(self, old: JobState, new: JobState) -> None: ...

    def reconfigured(self, cause: str, took_s: float) -> None: ...

    def reformed(self, cause: str) -> None: ...

    def reconciler_turn(self) -> None:
        """A job's reconciler decided once (on what it heard, or at its tick)."""


class FeedPort(Protocol):
    """Live followers of a job's events and logs (`coord logs -f`, watches)."""

    def publish(self, topic: str, job_id: str, record: Any) -> None: ...

    def close(self, topic: str, job_id: str) -> None: ...


@dataclasses.dataclass(frozen=True)
class Ports:
    store: StorePort
    agents: AgentsPort
    provider: ProviderPort
    quorum: QuorumPort
    clock: ClockPort
    metrics: MetricsPort
    feed: FeedPort
