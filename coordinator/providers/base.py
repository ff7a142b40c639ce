"""What a provider does: make the nodes a job asks for appear, and take them away."""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping

from contract.errors import Conflict
from contract.events import Payload
from contract.spec import JobSpec
from coordinator.providers.nodeio import ExecOutput
from coordinator.store import JobRecord, NodeRecord


@dataclasses.dataclass(frozen=True)
class AgentAccess:
    """What a provider hands every agent it starts so the agent can reach coordd."""

    address: Callable[[], str]  # HOST:PORT agents dial (known only once coordd listens)
    token: str                  # the agent join token (never a client token)
    ca_pem: str | None = None   # coordd's CA certificate when gRPC uses TLS
    insecure: bool = False      # coordd serves plaintext (only when explicitly configured)

    def agent_env(self) -> dict[str, str]:
        """The environment `coord-agent` reads its credentials from."""
        env = {"COORD_TOKEN": self.token}
        if self.ca_pem:
            env["COORD_CA_PEM"] = self.ca_pem
        if self.insecure:
            env["COORD_INSECURE"] = "1"
        return env


# Writes one event to a job's log (job id, kind, message, payload: contract/events.py), where
# `coord status` and `coord submit` show it: how a provider tells a user what it did (e.g.
# which fallback).
JobEvents = Callable[[str, str, str, Payload], Awaitable[None]]


class Provider(abc.ABC):
    """Nodes are created as records (JOINING) by the registry; the provider makes each one
    real, and its agent then registers with the node's id."""

    name: str
    # Set by the registry: a provider that sees a node's machine end (a Slurm allocation)
    # calls it with the node's id and the cause, so the node is lost at once.
    report_lost: Callable[[str, str], Awaitable[None]] | None = None

    @abc.abstractmethod
    async def launch(self, nodes: list[NodeRecord], job: JobRecord, spec: JobSpec) -> None:
        """Start a machine and an agent for each record; fill `provider_data` as needed."""

    @abc.abstractmethod
    async def terminate(self, node: NodeRecord, *, lost: bool) -> None:
        """Remove the machine. `lost`: it stopped answering, so do not wait for it politely."""

    async def start(self, known: Mapping[str, NodeRecord]) -> None:
        """coordd started and loaded its node records (`known`, by id): find the machines this
        provider left running, keep those a live node still owns, remove the rest."""

    async def close(self) -> None:
        """coordd is shutting down cleanly."""

    def check_fits(self, spec: JobSpec, source: str) -> str:
        """At submit: raise InvalidSpec when the job's nodes can never all run here; a
        warning for the job's events when they may not fit now ("" for none)."""
        return ""

    async def vet(self, spec: JobSpec, source: str) -> None:
        """At submit, after check_fits: raise InvalidSpec for what only the provider's own
        service can judge (the slurm provider asks `sbatch --test-only`)."""

    async def gone(self, node: NodeRecord) -> bool:
        """True when the provider knows that the node's machine or agent no longer exists, so
        it cannot reconnect (asked while nodes reconnect to a restarted coordd); False when it
        is alive or the provider cannot tell."""
        return False

    # node verbs (`coord exec / upload / download`): optional, for providers that can reach
    # their machines. Relative paths are inside the node's work directory.
    def exec(self, node: NodeRecord, command: str) -> AsyncIterator[ExecOutput]:
        """Run `command` with bash in the node's work directory: output, then the exit code."""
        raise self._no_verbs(node)

    async def upload(self, node: NodeRecord, path: str, chunks: AsyncIterator[bytes]) -> str:
        """Write `chunks` to `path` (parents created); returns the absolute path."""
        raise self._no_verbs(node)

    def download(self, node: NodeRecord, path: str) -> AsyncIterator[bytes]:
        """The file at `path`, in chunks of at most nodeio.CHUNK bytes."""
        raise self._no_verbs(node)

    def _no_verbs(self, node: NodeRecord) -> Conflict:
        return Conflict(f"node {node.id}: the {self.name} provider cannot run commands or move "
                        "files on its nodes")
