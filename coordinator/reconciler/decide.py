"""decide(view, now) -> actions: every decision the reconciler makes, as a pure function.

No I/O, no clock, no randomness: unit and property tests drive it one step at a time.
It must be idempotent: called again with the same view it asks for nothing new, because
the runner records each action's effect in the view (requested, stopping_since, ...).
"""

from __future__ import annotations

from contract.exits import PEER_LOST_EXIT
from contract.states import JobState, NodeState
from coordinator.reconciler.plan import (Acquire, Action, ChargeRestart, ConfirmInProcess,
                                         MarkBelowMinimum, Reform, Release, StartGeneration,
                                         StopGeneration, StopNodes, Transition)
from coordinator.reconciler.view import JobView, WorkerExit, failure_cause

GONE_STATES = (NodeState.LOST, NodeState.GONE)
# Looked up once: a decision walks every node, and on Python 3.11 an enum member's lookup
# through its class costs more than the walk's own work.
CONNECTED_STATES = (NodeState.READY, NodeState.ASSIGNED)
_GONE, _DRAINING, _SUSPECT = NodeState.GONE, NodeState.DRAINING, NodeState.SUSPECT
# After asking workers to stop, wait this much beyond their grace before starting anyway.
STOP_SLACK_S = 5.0
# A generation that lost a member is stopped without a grace: its workers cannot agree on a
# step boundary without that member (a frozen one leaves them in a collective until its
# timeout), and what they would commit is already in their per-step snapshots.
LOST_MEMBER_GRACE_S = 0.0


def decide(view: JobView, now: float) -> list[Action]:
    if view.state.terminal:
        return []
    if view.cancel_reason is not None:
        return finish(view, JobState.CANCELLED, view.cancel_reason)
    if view.fail_reason is not None:
        return finish(view, JobState.FAILED, view.fail_reason)
    # Connected nodes, worked out once per decision: each walks every node the job has.
    healthy = view.healthy()
    clock = _minimum_clock(view, now, healthy)
    if view.below_min_since is not None and now - view.below_min_since > view.policy.wait_for_min_s:
        return finish(view, JobState.FAILED, _below_minimum_reason(view))
    handler = _HANDLERS[view.state]
    return clock + handler(view, now, healthy)


def finish(view: JobView, state: JobState, reason: str) -> list[Action]:
    actions: list[Action] = [Transition(state, reason=reason)]
    if view.members and view.state != JobState.RECONFIGURING and state != JobState.SUCCEEDED:
        actions.append(StopGeneration(reason))
    owned = tuple(n.id for n in view.nodes.values() if n.state != _GONE)
    if owned:
        actions.append(Release(owned, reason=f"job {state.value.lower()}"))
    return actions


def _minimum_clock(view: JobView, now: float, healthy: list[str]) -> list[Action]:
    below = len(healthy) + len(_reconnecting(view)) < view.policy.minimum
    if below and view.below_min_since is None:
        return [MarkBelowMinimum(now)]
    if not below and view.below_min_since is not None:
        return [MarkBelowMinimum(None)]
    return []


def _below_minimum_reason(view: JobView) -> str:
    p = view.policy
    return (f"only {len(view.healthy())} of the minimum {p.minimum} nodes were available "
            f"for {p.wait_for_min_s:g} s (nodes.wait_for_min_s)")


def _pending(view: JobView, now: float, healthy: list[str]) -> list[Action]:
    return [Transition(JobState.PROVISIONING, cause="submitted")] + _replenish(view, healthy)


def _replenish(view: JobView, healthy: list[str]) -> list[Action]:
    """Ask for what is missing toward the target and spares; hand back drained and surplus
    nodes."""
    members = set(view.members)
    drained = tuple(n.id for n in view.nodes.values()
                    if n.state == _DRAINING and n.id not in members)
    if drained:
        return [Release(drained, reason="drained: the group re-formed without it")]
    p = view.policy
    wanted = p.target + p.spares
    missing = wanted - len(healthy) - view.coming()
    if missing > 0:
        spares = f" + {p.spares} spare(s)" if p.spares else ""
        return [Acquire(missing, reason=f"{len(healthy)} of {p.target}{spares} nodes healthy")]
    extra = [n for n in healthy[wanted:] if n not in members]
    if extra and view.state != JobState.PROVISIONING:
        return [Release(tuple(extra), reason="more nodes than the job's target and spares")]
    return []


def _reconnecting(view: JobView) -> list[str]:
    """Nodes that hold their place while their agents reconnect to a restarted coordd."""
    return [n.id for n in view.nodes.values() if n.state == _SUSPECT and n.reconnecting]


def _provisioning(view: JobView, now: float, healthy: list[str]) -> list[Action]:
    p = view.policy
    waited = now - view.state_since >= p.initial_full_wait_s
    if len(healthy) >= p.target or (len(healthy) >= p.minimum and waited):
        return [StartGeneration(tuple(healthy[:p.target]), cause="start")]
    return _replenish(view, healthy)


def _running(view: JobView, now: float, healthy: list[str]) -> list[Action]:
    if view.policy.mode == "auto" and not view.inproc.confirmed and view.all_joined_quorum():
        return [ConfirmInProcess()]
    if view.inprocess:
        return _running_inprocess(view, now, healthy)
    failures = sorted((e for e in view.exits.values() if e.code != 0), key=lambda e: e.time)
    lost = [m for m in view.members if view.nodes[m].state in GONE_STATES]
    if failures:
        # A member whose stream dropped while its peers' collectives failed took this
        # generation down with it: waiting out its reconnect grace would only add to the outage.
        lost += [m for m in view.members if view.nodes[m].state == _SUSPECT]
    if lost:
        reason = f"lost node{'s' if len(lost) > 1 else ''} {', '.join(lost)}"
        return [Transition(JobState.RECONFIGURING, reason=reason, cause="node_lost"),
                StopGeneration(reason, LOST_MEMBER_GRACE_S)] + _replenish(view, healthy)
    leaving = [m for m in view.members if view.nodes[m].state == _DRAINING]
    if leaving:  # graceful: every rank stops at one step boundary and commits it
        reason = f"node{'s' if len(leaving) > 1 else ''} {', '.join(leaving)} leaving"
        return [Transition(JobState.RECONFIGURING, reason=reason, cause="node_leaving"),
                StopGeneration(reason)] + _replenish(view, healthy)
    if failures:
        return _on_failure(view, now, failures[0])
    if view.exits and len(view.exits) == view.world_size:
        return finish(view, JobState.SUCCEEDED, "every worker exited 0")
    return _scale_up(view, now, healthy) or _replenish(view, healthy)


def _running_inprocess(view: JobView, now: float, healthy: list[str]) -> list[Action]:
    """Survivors are never stopped: lost and departed members are dropped from the membership,
    leaving members are stopped alone (each leaves its quorum at a step boundary), and new
    nodes are started straight into the running quorum. Only when no replica is left, or the
    job itself fails, does the job go through the restart path (from the durable checkpoint)."""
    if view.inproc.finished_at is not None:
        return _finishing(view, now)
    gone = [m for m in view.members if view.nodes[m].state in GONE_STATES]
    departed = [m for m in view.members if (view.nodes[m].state == _DRAINING
                                            or m in view.inproc.stopping_nodes)
                and view.all_exited(m)]
    if gone or departed:
        return _drop_members(view, gone, departed) + _replenish(view, healthy)
    leaving = tuple(m for m in view.members if view.nodes[m].state == _DRAINING
                    and m not in view.inproc.stopping_nodes)
    if leaving:
        reason = f"node{'s' if len(leaving) > 1 else ''} {', '.join(leaving)} leaving"
        return [StopNodes(leaving, reason)] + _replenish(view, healthy)
    if failures := _unasked_failures(view):
        return (_restart_in_place(view, failures, healthy)
                or _on_failure(view, now, failures[0]))
    if view.exits and len(view.exits) == view.world_size:
        return finish(view, JobState.SUCCEEDED, "every worker exited 0")
    members = set(view.members)
    newcomers = [n for n in healthy if n not in members]
    # A suspect member does not hold a place (if it comes back after its replacement joined,
    # `_stop_surplus` trims the job back to its target), unless it is only reconnecting to a
    # restarted coordd.
    room = view.policy.target - sum(view.nodes[m].state != _SUSPECT
                                    or view.nodes[m].reconnecting for m in view.members)
    if newcomers and room > 0 and not view.exits:
        added = tuple(newcomers[:room])
        return [Reform(tuple(view.members) + added, added, cause="node_joined",
                       reason=f"{', '.join(added)} joined the running replicas")]
    return _stop_surplus(view) or _replenish(view, healthy)


def _unasked_failures(view: JobView) -> list[WorkerExit]:
    """Non-zero exits of workers coordd did not ask to stop, oldest first."""
    told_to_stop = view.inproc.stopping_nodes | {m for m in view.members
                                          if view.nodes[m].state == _DRAINING}
    return sorted((e for e in view.exits.values()
                   if e.code != 0 and e.node_id not in told_to_stop), key=lambda e: e.time)


def _restart_in_place(view: JobView, failures: list[WorkerExit],
                      healthy_nodes: list[str]) -> list[Action]:
    """In-process mode: the workers that failed on nodes that stay healthy start again there
    (under fresh slots), join the running quorum and heal from a live peer, the way torchft
    restarts a replica in place; charged to max_restarts. [] (the restart path decides) when
    no other replica runs to heal from, a failed node's other ranks still run, a failed
    node is not healthy (its loss is handled as such), or the budget is spent."""
    failed = sorted({e.node_id for e in failures})
    healthy = set(healthy_nodes)
    if view.restarts >= view.policy.max_restarts or not all(
            n in healthy and view.all_exited(n) for n in failed):
        return []
    if not any(m in healthy and not view.all_exited(m) for m in view.members):
        return []
    first = failures[0]
    reason = (f"rank {first.rank} on node {first.node_id} exited with code {first.code}: "
              f"restarting {', '.join(failed)} in place")
    return [ChargeRestart(), Reform(tuple(view.members), tuple(failed), cause="worker_failed",
                                    reason=reason)]


def _finishing(view: JobView, now: float) -> list[Action]:
    """A replica trained to the last step: nothing restarts in place, joins or is replaced
    now. The job succeeds once each member's workers exited (or its node is gone). Replicas in
    step with it finish the same step; one that has not said so `finish_grace_s` later waits
    for a quorum its finished peers will never make (it started to join after they finished,
    or it fell behind them), so its member is stopped."""
    if failures := _unasked_failures(view):
        return _on_failure(view, now, failures[0])
    if all(view.all_exited(m) or view.nodes[m].state in GONE_STATES for m in view.members):
        clean = all(e.code == 0 for e in view.exits.values())
        return finish(view, JobState.SUCCEEDED, "every worker exited 0" if clean else
                      "training finished; every worker exited")
    if now - view.inproc.finished_at < view.policy.finish_grace_s:
        return []
    waiting = tuple(m for m in view.members
                    if m not in view.inproc.stopping_nodes and not view.all_exited(m)
                    and not set(view.ranks_of(m)) <= view.inproc.finished_ranks)
    if not waiting:
        return []
    return [StopNodes(waiting, f"training finished {view.policy.finish_grace_s:g} s ago and "
                               "these did not reach the last step: they wait for peers that "
                               "are gone")]


def _stop_surplus(view: JobView) -> list[Action]:
    """A member that came back after its replacement joined leaves the job above its target:
    the newest replicas beyond the target leave at a step boundary (then are handed back)."""
    live = [m for m in view.members if view.nodes[m].state in CONNECTED_STATES
            and m not in view.inproc.stopping_nodes]
    surplus = len(live) - view.policy.target
    if surplus <= 0 or view.exits:
        return []
    newest = tuple(sorted(live, key=lambda m: view.slots.get(m, -1))[-surplus:])
    return [StopNodes(newest, f"{len(live)} replicas running, the job's target is "
                              f"{view.policy.target}")]


def _drop_members(view: JobView, gone: list[str], departed: list[str]) -> list[Action]:
    reason = "; ".join(part for part in (
        f"lost {', '.join(gone)}" if gone else "", f"{', '.join(departed)} left" if departed
        else "") if part)
    cause = "node_lost" if gone else "node_leaving"
    leavers = set(gone) | set(departed)
    survivors = tuple(m for m in view.members if m not in leavers)
    if survivors:
        return [Reform(survivors, (), cause=cause, reason=reason)]
    # No replica holds the state in memory: resume from the durable checkpoint.
    return [Transition(JobState.RECONFIGURING, reason=f"{reason}: no replica left", cause=cause)]


def _on_failure(view: JobView, now: float, first: WorkerExit) -> list[Action]:
    peers_only = all(e.code == PEER_LOST_EXIT for e in view.exits.values() if e.code != 0)
    settle = view.policy.peer_failure_settle_s if peers_only else view.policy.failure_settle_s
    if now - first.time < settle:
        return []  # wait: a node loss, not the job, may be the cause
    cause = failure_cause(_unasked_failures(view)) or first
    reason = f"rank {cause.rank} on node {cause.node_id} exited with code {cause.code}"
    if view.restarts < view.policy.max_restarts:
        return [ChargeRestart(),
                Transition(JobState.RECONFIGURING, reason=reason, cause="worker_failed"),
                StopGeneration(reason)]
    budget = f"max_restarts={view.policy.max_restarts} used up" if view.policy.max_restarts else \
        "max_restarts=0"
    return finish(view, JobState.FAILED, f"{reason} ({budget})")


def _scale_up(view: JobView, now: float, healthy: list[str]) -> list[Action]:
    members = set(view.members)
    newcomers = [n for n in healthy if n not in members]
    if not newcomers or len(view.members) >= view.policy.target or view.exits:
        return []
    if now - view.state_since < view.policy.scale_up_min_runtime_s:
        return []
    last_join = max(view.nodes[n].joined_at for n in newcomers)
    if now - last_join < view.policy.scale_up_settle_s:
        return []
    reason = f"{len(newcomers)} node(s) joined: growing toward {view.policy.target}"
    return [Transition(JobState.RECONFIGURING, reason=reason, cause="scale_up"),
            StopGeneration(reason)]


def _reconfiguring(view: JobView, now: float, healthy: list[str]) -> list[Action]:
    if _still_stopping(view, now):
        return []
    if len(healthy) >= view.policy.minimum:
        return [StartGeneration(tuple(healthy[:view.policy.target]),
                                cause=view.reconfigure_cause or "reconfigure")]
    return _replenish(view, healthy)


def _still_stopping(view: JobView, now: float) -> bool:
    """True while a live member may still run a worker of the old generation."""
    if view.stopping_since is not None and \
            now - view.stopping_since > view.policy.stop_grace_s + STOP_SLACK_S:
        return False
    for node_id in view.members:
        if view.nodes[node_id].state in GONE_STATES + (_SUSPECT,):
            continue  # unreachable: whatever it still runs is fenced by the generation
        if not view.all_exited(node_id):
            return True
    return False


_HANDLERS = {
    JobState.PENDING: _pending,
    JobState.PROVISIONING: _provisioning,
    JobState.RUNNING: _running,
    JobState.RECONFIGURING: _reconfiguring,
}
