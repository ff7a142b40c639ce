"""What the reconciler hears: node and worker reports, and a user's cancel. Plain values,
fed to `evolve` in the order they arrive."""

from __future__ import annotations

import dataclasses

from coordinator.reconciler.resume import CheckpointCommitted, WorkerRestored
from coordinator.reconciler.view import NodeView, WorkerExit


@dataclasses.dataclass(frozen=True)
class NodeChanged:
    node: NodeView


@dataclasses.dataclass(frozen=True)
class NodesCreated:
    nodes: tuple[NodeView, ...]
    asked: int


@dataclasses.dataclass(frozen=True)
class WorkerExited:
    generation: int  # the worker generation the worker was started in
    exit: WorkerExit


@dataclasses.dataclass(frozen=True)
class WorkerExits:
    """Exits heard together: the same as hearing each in turn, in one change of the view
    (a thousand-node group's exits at one instant cost one copy, not a thousand)."""
    exits: tuple[WorkerExited, ...]


@dataclasses.dataclass(frozen=True)
class WorkerInProcess:
    """A worker took part in its first step as an in-process replica."""
    generation: int
    node_id: str
    rank: int


@dataclasses.dataclass(frozen=True)
class WorkerFinished:
    """An in-process replica trained to the last step: the job's training is done."""
    generation: int
    node_id: str
    rank: int


@dataclasses.dataclass(frozen=True)
class NodesForgotten:
    """These nodes no longer concern the job (lost or handed back, and not members): they
    leave the view, so a long job's decisions cost in proportion to its size, not to every
    node it ever had. Any other node named is kept."""
    node_ids: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class Cancel:
    reason: str


@dataclasses.dataclass(frozen=True)
class FailJob:
    """The job must fail now (its workers would start over, its reconciler crashed ...)."""
    reason: str


def coalesce(events: list[Event]) -> list[Event]:
    """`events` with each run of worker exits heard one after another merged into one
    `WorkerExits`: the same view after them, one change of it (and one decision) per run."""
    merged: list[Event] = []
    for event in events:
        exits = _exits(event)
        if exits and merged and (before := _exits(merged[-1])):
            merged[-1] = WorkerExits(before + exits)
        else:
            merged.append(event)
    return merged


def _exits(event: Event) -> tuple[WorkerExited, ...]:
    if isinstance(event, WorkerExited):
        return (event,)
    return event.exits if isinstance(event, WorkerExits) else ()


Event = (NodeChanged | NodesCreated | NodesForgotten | WorkerExited | WorkerExits
         | WorkerInProcess | WorkerFinished | Cancel | FailJob | CheckpointCommitted
         | WorkerRestored)
