"""The quorum services (torchft Lighthouses) of in-process jobs: one per job, started with its
first in-process generation and kept to its end. On PostgreSQL each lives on the leader's host
and only as long as its lease (coordinator/quorum.py); the replicas reach it through a relay
(trainer/elastic/relay.py) that coordd points at the new leader's after a failover."""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable

from contract import events as ev
from contract.spec import JobSpec
from coordinator.quorum import QuorumService, public_host
from coordinator.settings import CoorddSettings
from coordinator.store import JobRecord

JobEvent = Callable[[str, str, str, ev.Payload], Awaitable[None]]  # job, kind, message, data


class Quorums:
    def __init__(self, settings: CoorddSettings, event: JobEvent):
        self.settings, self.event = settings, event
        self.services: dict[str, QuorumService] = {}
        self.until = math.inf  # until when this coordd leads (monotonic): set on PostgreSQL

    async def address(self, record: JobRecord, spec: JobSpec) -> str:
        """The job's Lighthouse, started on first use."""
        if service := self.services.get(record.id):
            return service.address

        async def on_event(kind: str, message: str, payload: ev.Payload) -> None:
            await self.event(record.id, kind, message, payload)

        service = QuorumService(record.id, public_host(self.settings), spec.min_world_size,
                                on_event, self.settings.state_dir / "quorum" / record.id,
                                until=lambda: self.until)
        self.services[record.id] = service
        address = await service.start()
        await self.event(record.id, ev.QUORUM_STARTED,
                         f"quorum service (Lighthouse) at {address}",
                         ev.QuorumStarted(address=address))
        return address

    def running(self, job_id: str) -> str:
        """The address of the job's Lighthouse once it runs here; '' before."""
        service = self.services.get(job_id)
        return service.address if service and service.process else ""

    def renew(self, until: float) -> None:
        """The leader renewed its lease: its Lighthouses may serve until `until` too."""
        self.until = until
        for service in self.services.values():
            service.renew(until)

    async def stop(self, job_id: str) -> None:
        """The job ended: its Lighthouse and its lease go."""
        if service := self.services.pop(job_id, None):
            await service.stop()

    async def stop_all(self) -> None:
        """After the local nodes stopped: in-process replicas that leave need their quorum
        service to commit the step in flight. The jobs go on: their leases are kept."""
        for service in self.services.values():
            await service.stop(job_ended=False)
        self.services.clear()
