"""The events an action appends to the job's log (what `coord status` and the SDK read), as
plain values; pure, like `decide` and `evolve`."""

from __future__ import annotations

import dataclasses

from contract import events as ev
from contract.states import JobState
from coordinator.reconciler import plan
from coordinator.reconciler.view import JobView


@dataclasses.dataclass(frozen=True)
class Entry:
    kind: str
    message: str
    payload: ev.Payload


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
            return [Entry(ev.GENERATION_STOPPING, f"stopping generation {new.epoch}: {reason}",
                          ev.NodesNamed(nodes=list(new.live_members())))]
        case plan.StopNodes(node_ids, reason):
            return [Entry(ev.NODES_STOPPING, f"stopping the workers of {', '.join(node_ids)}: "
                          f"{reason}; the others keep running",
                          ev.NodesNamed(nodes=list(node_ids)))]
        case plan.ConfirmInProcess():
            return [Entry(ev.INPROCESS_CONFIRMED, "every worker took part in a step as an "
                          "in-process replica: a node loss now re-forms them in place",
                          ev.InProcessConfirmed(worker_generation=new.worker_generation))]
        case plan.Acquire(count, reason):
            return [Entry(ev.NODES_REQUESTED, f"asking the provider for {count} node(s): "
                          f"{reason}", ev.NodesRequested(count=count))]
    return []


def _state(old: JobState, new: JobState, reason: str = "", cause: str = "",
           full: bool = False) -> Entry:
    if not full:  # a generation's start says why itself
        return Entry(ev.STATE, f"{old} -> {new}", ev.StateChanged(old=str(old), new=str(new)))
    return Entry(ev.STATE, f"{old} -> {new}" + (f": {reason}" if reason else ""),
                 ev.StateChanged(old=str(old), new=str(new), cause=cause, reason=reason))


def took(old: JobView, now: float) -> float:
    """A restart's duration: from entering RECONFIGURING to the new generation's start."""
    return round(now - old.reconfigure_started, 3) if old.state == JobState.RECONFIGURING else 0


def _started(old: JobView, action: plan.StartGeneration, new: JobView, now: float,
             master: tuple[str, int]) -> Entry:
    members = list(action.node_ids)
    address = f"{master[0]}:{master[1]}"
    return Entry(ev.GENERATION_STARTED, f"generation {new.epoch} on {len(members)} node(s) "
                 f"({action.cause}); master {address}",
                 ev.GenerationStarted(cause=action.cause, old_members=list(old.members),
                                      new_members=members, world_size=new.world_size,
                                      master=address, took_s=took(old, now), epoch=new.epoch,
                                      worker_generation=new.worker_generation))


def _reformed(old: JobView, action: plan.Reform, new: JobView, now: float) -> Entry:
    members = list(action.members)
    return Entry(ev.GENERATION_REFORMED, f"generation {new.epoch}: in-process re-formation on "
                 f"{len(members)} node(s) ({action.cause}: {action.reason}); surviving workers "
                 "keep running",
                 ev.GenerationReformed(cause=action.cause, old_members=list(old.members),
                                       new_members=members, added=list(action.added),
                                       world_size=new.world_size, epoch=new.epoch,
                                       worker_generation=new.worker_generation,
                                       slots=dict(new.slots),
                                       took_s=round(max(0.0, now - old.changed_at), 3)))
