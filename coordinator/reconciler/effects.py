"""The effects of an action on the world outside the view, as plain values.

`effects_of` is pure. The runner stores each effect's intent in the same transaction as the
decision (an outbox), performs it, then marks it done; a restarted coordd performs again every
intent not marked done. Each effect is therefore safe to repeat: an agent ignores a start of
ranks it already runs or ran, a second stop or release changes nothing.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from coordinator.reconciler import plan
from coordinator.reconciler.reduce import replaced_by
from coordinator.reconciler.view import JobView


@dataclasses.dataclass(frozen=True)
class Launch:
    """Start the workers of `worker_generation` on one node (its ranks: by its slot)."""
    node_id: str
    worker_generation: int
    master: tuple[str, int]


@dataclasses.dataclass(frozen=True)
class StopWorkers:
    node_id: str
    epoch: int
    reason: str
    grace_s: float | None = None


@dataclasses.dataclass(frozen=True)
class TellReformed:
    """In-process mode: a running node's replicas learn which replicas were dropped."""
    node_id: str
    epoch: int
    dropped: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class ReleaseNode:
    node_id: str
    reason: str


@dataclasses.dataclass(frozen=True)
class StopQuorum:
    """The job ended: its quorum service (in-process jobs) stops."""


@dataclasses.dataclass(frozen=True)
class AcquireNodes:
    """Not kept in the outbox: a restarted coordd counts no request in flight, and asks anew."""
    count: int


Effect = Launch | StopWorkers | TellReformed | ReleaseNode | StopQuorum | AcquireNodes
NODE_EFFECTS = (Launch, StopWorkers, TellReformed, ReleaseNode)
_KINDS = {cls.__name__: cls for cls in (Launch, StopWorkers, TellReformed, ReleaseNode,
                                        StopQuorum)}


def effects_of(old: JobView, action: plan.Action, new: JobView,
               master: tuple[str, int] = ("", 0)) -> list[Effect]:
    """What performing `action` does outside the view (`new` is the view after it)."""
    match action:
        case plan.StartGeneration(node_ids):
            return [Launch(n, new.worker_generation, master) for n in node_ids]
        case plan.Reform():
            return _reform_effects(old, action, new, master)
        case plan.StopGeneration(reason, grace_s):
            return [StopWorkers(m, new.epoch, reason, grace_s) for m in new.live_members()]
        case plan.StopNodes(node_ids, reason):
            return [StopWorkers(n, new.epoch, reason) for n in node_ids]
        case plan.Acquire(count):
            return [AcquireNodes(count)]
        case plan.Release(node_ids, reason):
            return [ReleaseNode(n, reason) for n in node_ids]
        case plan.Transition(to) if to.terminal:
            return [StopQuorum()]
    return []


def _reform_effects(old: JobView, action: plan.Reform, new: JobView,
                    master: tuple[str, int]) -> list[Effect]:
    # A replica's name as the trainer gives it to torchft: NODE_RANK.
    dropped = tuple(f"{n}_{rank}" for n in replaced_by(old, action) for rank in old.ranks_of(n))
    effects: list[Effect] = []
    if dropped:
        effects += [TellReformed(n, new.epoch, dropped) for n in action.members
                    if n not in action.added]
    return effects + [Launch(n, new.worker_generation, master) for n in action.added]


def durable(effect: Effect) -> bool:
    return type(effect).__name__ in _KINDS


def dump(effect: Effect) -> tuple[str, str]:
    return type(effect).__name__, json.dumps(dataclasses.asdict(effect))


def load(kind: str, data_json: str) -> Effect:
    data: dict[str, Any] = json.loads(data_json)
    for key in ("master", "dropped"):
        if key in data:
            data[key] = tuple(data[key])
    return _KINDS[kind](**data)
