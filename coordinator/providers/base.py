"""What a provider does: make the nodes a job asks for appear, and take them away."""

from __future__ import annotations

import abc

from coordinator.spec import JobSpec
from coordinator.store import JobRecord, NodeRecord


class Provider(abc.ABC):
    """Nodes are created as records (JOINING) by the registry; the provider makes each one
    real, and its agent then registers with the node's id."""

    name: str

    @abc.abstractmethod
    async def launch(self, nodes: list[NodeRecord], job: JobRecord, spec: JobSpec) -> None:
        """Start a machine and an agent for each record; fill `provider_data` as needed."""

    @abc.abstractmethod
    async def terminate(self, node: NodeRecord, *, lost: bool) -> None:
        """Remove the machine. `lost`: it stopped answering, so do not wait for it politely."""

    async def close(self) -> None:
        """coordd is shutting down cleanly."""
