"""evolve(view, message, now) -> view: the one place a JobView changes.

A message is either an event the reconciler heard (events.py) or an action `decide` asked for
(plan.py), applied as if its effects succeeded. The function is pure: the view passed in is
never modified, and the same inputs give the same result. Together with `decide` it is the
whole reconciler; the runner only persists and performs effects around it, and a simulator or
a unit test can run a job's life with the two alone:

    view = evolve(view, NodeChanged(node), now)
    for action in decide(view, now):
        view = evolve(view, action, now)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from contract.states import JobState, NodeState
from coordinator.reconciler import plan
from coordinator.reconciler.events import (Cancel, Event, FailJob, NodeChanged, NodesCreated,
                                           NodesForgotten, WorkerExited, WorkerExits,
                                           WorkerFinished, WorkerInProcess)
from coordinator.reconciler.inprocess import InProcessView
from coordinator.reconciler.view import JobView

Message = Event | plan.Action


def evolve(view: JobView, message: Message, now: float) -> JobView:
    """The view after `message`; messages that change nothing return `view` itself."""
    handler = _HANDLERS.get(type(message))
    return handler(view, message, now) if handler else view


_CONTAINERS = {"members": list, "nodes": dict, "exits": dict, "slots": dict}


def _copy(view: JobView, *mutated: str, **changes: Any) -> JobView:
    """A new view with `changes`, and fresh copies of the containers named in `mutated`
    (the handler changes those in place). The others are shared with `view`: nothing
    changes a view's containers in place but this module, and only on fresh copies, so a
    message costs what it changes, not the job's size."""
    fresh = {name: _CONTAINERS[name](getattr(view, name)) for name in mutated}
    return dataclasses.replace(view, **(fresh | changes))


# events ------------------------------------------------------------------------------
def _node_changed(view: JobView, event: NodeChanged, now: float) -> JobView:
    new = _copy(view, "nodes", changed_at=now)
    new.nodes[event.node.id] = event.node
    return new


def _nodes_created(view: JobView, event: NodesCreated, now: float) -> JobView:
    new = _copy(view, "nodes", requested=max(0, view.requested - event.asked))
    for node in event.nodes:
        new.nodes.setdefault(node.id, node)
    return new


def _nodes_forgotten(view: JobView, event: NodesForgotten, now: float) -> JobView:
    members = set(view.members)
    drop = [n for n in event.node_ids if n not in members and n in view.nodes
            and view.nodes[n].state in (NodeState.LOST, NodeState.GONE)]
    if not drop:
        return view
    new = _copy(view, "nodes")
    for node_id in drop:
        del new.nodes[node_id]
    return new


def _worker_exited(view: JobView, event: WorkerExited, now: float) -> JobView:
    return _worker_exits(view, WorkerExits((event,)), now)


def _worker_exits(view: JobView, event: WorkerExits, now: float) -> JobView:
    exits = dict(view.exits)
    for report in event.exits:
        exit_ = report.exit
        # Only a current rank of a member counts (not one a restarted replica left); the
        # first report of a rank wins.
        if (view.counts(report.generation, exit_.node_id) and exit_.rank not in exits
                and exit_.rank in view.ranks_of(exit_.node_id)):
            exits[exit_.rank] = exit_
    if len(exits) == len(view.exits):
        return view
    return _copy(view, changed_at=now, exits=exits)


def _worker_in_process(view: JobView, event: WorkerInProcess, now: float) -> JobView:
    if not view.counts(event.generation, event.node_id):
        return view
    return _copy(view, inproc=view.inproc.joined(event.rank))


def _worker_finished(view: JobView, event: WorkerFinished, now: float) -> JobView:
    if not view.counts(event.generation, event.node_id):
        return view
    return _copy(view, inproc=view.inproc.finished(event.rank, now))


def _cancel(view: JobView, event: Cancel, now: float) -> JobView:
    return _copy(view, cancel_reason=event.reason)


def _fail(view: JobView, event: FailJob, now: float) -> JobView:
    return _copy(view, fail_reason=view.fail_reason or event.reason)


# actions -----------------------------------------------------------------------------
def _transition(view: JobView, action: plan.Transition, now: float) -> JobView:
    new = _copy(view, state=action.to, state_since=now)
    if action.to == JobState.RECONFIGURING:
        new.reconfigure_cause, new.reconfigure_started = action.cause, now
    return new


def _start_generation(view: JobView, action: plan.StartGeneration, now: float) -> JobView:
    """Every worker starts again: a new membership epoch and a new worker generation."""
    members = list(action.node_ids)
    epoch = view.epoch + 1
    return _copy(view, members=members, epoch=epoch, worker_generation=epoch, exits={},
                 slots={node_id: index for index, node_id in enumerate(members)},
                 next_slot=len(members), inproc=InProcessView(), state=JobState.RUNNING,
                 state_since=now, stopping_since=None)


def replaced_by(view: JobView, action: plan.Reform) -> list[str]:
    """Members a re-formation drops, or whose workers restart in place under fresh slots."""
    return sorted(set(view.members) - (set(action.members) - set(action.added)))


def _reform(view: JobView, action: plan.Reform, now: float) -> JobView:
    """In place: a new membership epoch, the same worker generation. Dropped members and
    members whose workers restart lose their old ranks' exits and slots (a restarted replica
    never reuses a rank); added nodes take fresh slots."""
    replaced = replaced_by(view, action)
    new = _copy(view, "exits", "slots", members=list(action.members), epoch=view.epoch + 1,
                next_slot=view.next_slot + len(action.added),
                inproc=view.inproc.dropped(replaced))
    for node_id in replaced:
        for rank in view.ranks_of(node_id):
            new.exits.pop(rank, None)
        new.slots.pop(node_id, None)
    for offset, node_id in enumerate(action.added):
        new.slots[node_id] = view.next_slot + offset
    return new


def _stop_generation(view: JobView, action: plan.StopGeneration, now: float) -> JobView:
    return _copy(view, stopping_since=now)


def _stop_nodes(view: JobView, action: plan.StopNodes, now: float) -> JobView:
    return _copy(view, inproc=view.inproc.stopping(action.node_ids))


def _confirm(view: JobView, action: plan.ConfirmInProcess, now: float) -> JobView:
    return _copy(view, inproc=view.inproc.confirm())


def _acquire(view: JobView, action: plan.Acquire, now: float) -> JobView:
    return _copy(view, requested=view.requested + action.count)


def _release(view: JobView, action: plan.Release, now: float) -> JobView:
    new = _copy(view, "nodes")
    for node_id in action.node_ids:
        new.nodes[node_id] = dataclasses.replace(new.nodes[node_id], state=NodeState.GONE)
    return new


def _charge_restart(view: JobView, action: plan.ChargeRestart, now: float) -> JobView:
    return _copy(view, restarts=view.restarts + 1)


def _mark_below_minimum(view: JobView, action: plan.MarkBelowMinimum, now: float) -> JobView:
    return _copy(view, below_min_since=action.since)


_HANDLERS: dict[type, Callable[[JobView, Any, float], JobView]] = {
    NodeChanged: _node_changed, NodesCreated: _nodes_created, NodesForgotten: _nodes_forgotten,
    WorkerExited: _worker_exited, WorkerExits: _worker_exits,
    WorkerInProcess: _worker_in_process, WorkerFinished: _worker_finished, Cancel: _cancel,
    FailJob: _fail, plan.Transition: _transition, plan.StartGeneration: _start_generation,
    plan.Reform: _reform, plan.StopGeneration: _stop_generation, plan.StopNodes: _stop_nodes,
    plan.ConfirmInProcess: _confirm, plan.Acquire: _acquire, plan.Release: _release,
    plan.ChargeRestart: _charge_restart, plan.MarkBelowMinimum: _mark_below_minimum,
}
