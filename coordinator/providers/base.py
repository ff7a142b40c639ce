"""What a provider does: make the nodes a job asks for appear, and take them away."""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Callable

from coordinator.spec import JobSpec
from coordinator.store import JobRecord, NodeRecord


@dataclasses.dataclass(frozen=True)
class AgentAccess:
    """What a provider hands every agent it starts so the agent can reach coordd."""

    address: Callable[[], str]  # HOST:PORT agents dial (known only once coordd listens)
    token: str                  # the agent join token (never a client token)
    ca_pem: str | None = None   # coordd's CA certificate when gRPC uses TLS

    def agent_env(self) -> dict[str, str]:
        """The environment `coord-agent` reads its credentials from."""
        env = {"COORD_TOKEN": self.token}
        if self.ca_pem:
            env["COORD_CA_PEM"] = self.ca_pem
        return env


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
