"""The events an action appends to the job's log (what `coord status` and the SDK read), as
plain values; pure, like `decide` and `evolve`."""

from __future__ import annotations

import dataclasses
from typing import Any

from coordinator.reconciler import plan
from coordinator.reconciler.view import JobView
from contract.states import JobState

GENERATION_STARTED = "generation.started"  # a restart: every worker starts again
GENERATION_REFORMED = "generation.reformed"  # in place: the running workers keep running


@dataclasses.dataclass(frozen=True)
class Entry:
    kind: str
    message: str
    data: dict[str, Any]


def entries(old: JobView, action: plan.Action, new: JobView, now: float,
            master: tuple[str, int] = ("", 0)) -> list[Entry]:
    match action:
        case plan.Transition(to, reason, cause):
            return [_state(old.state, to, reason, cause, full=True)]
        case plan.StartGeneration():
            return [_started(old, action, new, now, master), _state(old.state, JobState.RUNNING)]
        case plan.Reform():
            return [_reformed(old, action, new, now)]
        case plan.StopGeneration(reason):
            return [Entry("generation.stopping", f"stopping generation {new.epoch}: {reason}",
                          dict(nodes=new.live_members()))]
        case plan.StopNodes(node_ids, reason):
            return [Entry("nodes.stopping", f"stopping the workers of {', '.join(node_ids)}: "
                          f"{reason}; the others keep running", dict(nodes=list(node_ids)))]
        case plan.ConfirmInProcess():
            return [Entry("inprocess.confirmed", "every worker took part in a step as an "
                          "in-process replica: a node loss now re-forms them in place",
                          dict(worker_generation=new.worker_generation))]
        case plan.Acquire(count, reason):
            return [Entry("nodes.requested", f"asking the provider for {count} node(s): "
                          f"{reason}", dict(count=count))]
    return []


def _state(old: JobState, new: JobState, reason: str = "", cause: str = "",
           full: bool = False) -> Entry:
    if not full:  # a generation's start says why itself
        return Entry("state", f"{old} -> {new}", dict(old=str(old), new=str(new)))
    return Entry("state", f"{old} -> {new}" + (f": {reason}" if reason else ""),
                 dict(old=str(old), new=str(new), cause=cause, reason=reason))


def took(old: JobView, now: float) -> float:
    """A restart's duration: from entering RECONFIGURING to the new generation's start."""
    return round(now - old.reconfigure_started, 3) if old.state == JobState.RECONFIGURING else 0


def _started(old: JobView, action: plan.StartGeneration, new: JobView, now: float,
             master: tuple[str, int]) -> Entry:
    members = list(action.node_ids)
    address = f"{master[0]}:{master[1]}"
    return Entry(GENERATION_STARTED, f"generation {new.epoch} on {len(members)} node(s) "
                 f"({action.cause}); master {address}",
                 dict(cause=action.cause, old_members=old.members, new_members=members,
                      world_size=new.world_size, master=address, took_s=took(old, now),
                      epoch=new.epoch, worker_generation=new.worker_generation))


def _reformed(old: JobView, action: plan.Reform, new: JobView, now: float) -> Entry:
    members = list(action.members)
    return Entry(GENERATION_REFORMED, f"generation {new.epoch}: in-process re-formation on "
                 f"{len(members)} node(s) ({action.cause}: {action.reason}); surviving workers "
                 "keep running",
                 dict(cause=action.cause, old_members=old.members, new_members=members,
                      added=list(action.added), world_size=new.world_size,
                      epoch=new.epoch, worker_generation=new.worker_generation,
                      slots=dict(new.slots), took_s=round(max(0.0, now - old.changed_at), 3)))
