"""What the reconciler knows about one job: a plain value, so `decide` stays pure."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

from contract.exits import PEER_LOST_EXIT
from contract.states import JobState, NodeState
from coordinator.reconciler.inprocess import InProcessView

# Looked up once: the view's queries walk every node, and on Python 3.11 an enum member's
# lookup through its class costs more than the walk's own work.
_CONNECTED = (NodeState.READY, NodeState.ASSIGNED)
_GONE_STATES = (NodeState.LOST, NodeState.GONE)
_JOINING, _SUSPECT = NodeState.JOINING, NodeState.SUSPECT


@dataclasses.dataclass
class NodeView:
    id: str
    state: NodeState
    host: str = ""
    free_port: int = 0
    joined_at: float = 0.0
    # SUSPECT only because coordd restarted: its agent has not had the chance to reconnect
    # yet, so it keeps its place (no replacement is asked for on its account).
    reconnecting: bool = False


@dataclasses.dataclass
class WorkerExit:
    node_id: str
    rank: int
    code: int
    time: float


def failure_cause(exits: Iterable[WorkerExit]) -> WorkerExit | None:
    """The failure to name: the earliest one that is not a peer's loss (those follow from
    it), else the earliest; None when every worker exited 0."""
    failures = sorted((e for e in exits if e.code != 0), key=lambda e: e.time)
    return next((e for e in failures if e.code != PEER_LOST_EXIT), failures[0] if failures
                else None)


@dataclasses.dataclass(frozen=True)
class Policy:
    """Timings from coordd's settings and the job's spec (built by `policy.policy_for`)."""

    target: int
    minimum: int
    max_restarts: int
    wait_for_min_s: float
    nproc_per_node: int
    stop_grace_s: float
    # A failure is charged to the job only if no node went missing within this window:
    # when a machine dies, its peers' collectives fail a moment before its stream drops.
    failure_settle_s: float
    # Workers that exit with PEER_LOST_EXIT say a peer vanished: give node-loss detection
    # (heartbeats included) time to confirm before the job is charged.
    peer_failure_settle_s: float
    # In-process mode: members that never took part in a step are stopped this long after a
    # replica reported the last step (they would wait for a quorum forever).
    finish_grace_s: float
    # Joins that arrive within this window are taken in one reconfiguration.
    scale_up_settle_s: float
    # A generation runs at least this long before a scale-up restarts it: growing back must
    # not cost more progress than it brings.
    scale_up_min_runtime_s: float
    # How long the first generation waits for all `target` nodes before starting with `minimum`.
    initial_full_wait_s: float
    # [nodes] spares: idle nodes kept on top of the target, ready to replace a lost one.
    spares: int = 0
    # [fault_tolerance] mode: "inprocess" re-forms the replicas in place on a node loss,
    # "restart" restarts the group, "auto" re-forms in place once every worker of the
    # generation has taken part in a step as an in-process replica (else restarts).
    mode: str = "restart"


@dataclasses.dataclass
class JobView:
    """Changed only by `reduce.evolve` (see docs/generations.md for the two epochs)."""

    job_id: str
    state: JobState
    # The membership epoch: moved by every re-formation, in place or by a restart.
    epoch: int
    restarts: int
    policy: Policy
    members: list[str] = dataclasses.field(default_factory=list)   # rank order, current epoch
    nodes: dict[str, NodeView] = dataclasses.field(default_factory=dict)  # owned by the job
    requested: int = 0                       # provider acquisitions in flight
    exits: dict[int, WorkerExit] = dataclasses.field(default_factory=dict)  # rank -> exit
    state_since: float = 0.0                 # when the job entered `state`
    stopping_since: float | None = None      # when StopWorkers was sent for `generation`
    below_min_since: float | None = None
    cancel_reason: str | None = None
    fail_reason: str | None = None           # the job must fail now, for this reason
    reconfigure_cause: str = ""
    reconfigure_started: float = 0.0         # when the job last entered RECONFIGURING
    changed_at: float = 0.0                  # when a node or worker report last arrived
    # The worker (fence) generation: the epoch the running workers were started in; moved
    # only when workers restart. In-process re-formations move `epoch` alone.
    worker_generation: int = 0
    # Each member's replica slot: its workers' ranks never change while it runs.
    slots: dict[str, int] = dataclasses.field(default_factory=dict)
    next_slot: int = 0  # slots are never reused, not even those of members since dropped
    inproc: InProcessView = InProcessView()

    @property
    def inprocess(self) -> bool:
        """A node loss re-forms the running replicas in place (no worker restarts)."""
        return self.policy.mode == "inprocess" or (self.policy.mode == "auto"
                                                   and self.inproc.confirmed)

    def all_joined_quorum(self) -> bool:
        """Auto mode: every rank of every member took part in a step as an in-process replica."""
        return bool(self.members) and all(rank in self.inproc.joined_ranks
                                          for m in self.members for rank in self.ranks_of(m))

    def counts(self, generation: int, node_id: str) -> bool:
        """A worker's report counts only from the running worker generation on a member."""
        return generation == self.worker_generation and (
            node_id in self.slots or node_id in self.members)  # slots: members' only

    @property
    def world_size(self) -> int:
        return len(self.members) * self.policy.nproc_per_node

    def ranks_of(self, node_id: str) -> range:
        """The worker ranks a member runs: by replica slot, else by its place in `members`."""
        slot = self.slots.get(node_id)
        if slot is None:
            slot = self.members.index(node_id)
        per_node = self.policy.nproc_per_node
        return range(slot * per_node, (slot + 1) * per_node)

    def live_members(self) -> list[str]:
        """Members that may still run workers (not lost, not released)."""
        return [m for m in self.members
                if self.nodes[m].state not in _GONE_STATES]

    def all_exited(self, node_id: str) -> bool:
        return all(rank in self.exits for rank in self.ranks_of(node_id))

    def healthy(self) -> list[str]:
        """Connected nodes, members first in rank order, then newcomers by join time."""
        ready = {n.id for n in self.nodes.values()
                 if n.state in _CONNECTED}
        members = [m for m in self.members if m in ready]
        others = sorted((self.nodes[n] for n in ready - set(members)),
                        key=lambda n: (n.joined_at, n.id))
        return members + [n.id for n in others]

    def coming(self) -> int:
        """Nodes that may still become healthy: requested, joining, or members whose stream
        dropped (a blip, until proven otherwise). A suspect node already dropped from the
        generation is not counted: its replacement is asked for at once. In in-process mode a
        suspect member is not counted either: its replica has usually left the quorum already,
        and a replacement joins without disturbing anyone."""
        return self.requested + sum(
            1 for n in self.nodes.values()
            if n.state == _JOINING or (n.state == _SUSPECT and (
                n.reconnecting or (n.id in self.members and not self.inprocess))))
