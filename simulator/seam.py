"""THE SEAM: how the simulator changes the reconciler's view, in one place.

coordd's runner records each action's effect and each event in the `JobView` it hands to
`decide`; that state change lives inside coordinator/reconciler/runner.py (mixed with I/O).
Until it is one pure function there (`evolve(view, event_or_action) -> view`, beside
`decide`), `apply_action` and the `on_*` functions below repeat, for the simulator, exactly
the view updates the runner makes. At merge the lead replaces this module's bodies with calls
to `evolve`; nothing else in the simulator touches a JobView's fields directly (it reads them).
"""

from __future__ import annotations

from coordinator.reconciler import plan
from coordinator.reconciler.view import JobView, NodeView, WorkerExit
from contract.states import JobState, NodeState


class Members(list):
    """A job's members with O(1) membership: `decide` asks `n in view.members` once per node,
    which on a plain list makes one decision O(N^2) at 1,000 nodes. Built whole and never
    changed in place (the view's members are replaced, not edited)."""

    def __init__(self, items=()) -> None:  # noqa: ANN001
        super().__init__(items)
        self._set = frozenset(self)

    def __contains__(self, item: object) -> bool:
        return item in self._set


def apply_action(view: JobView, action: plan.Action, now: float) -> None:
    """The view after the runner acted on `action` (runner.JobRunner._act and helpers)."""
    match action:
        case plan.Transition(to, _, cause):
            view.state, view.state_since = to, now
            if to == JobState.RECONFIGURING:
                view.reconfigure_cause = cause
        case plan.StartGeneration(node_ids, _):
            _start_generation(view, list(node_ids), now)
        case plan.StopGeneration():
            view.stopping_since = now
        case plan.Reform():
            _reform(view, action)
        case plan.StopNodes(node_ids, _):
            view.stopping_nodes.update(node_ids)
        case plan.ConfirmInProcess():
            view.inprocess_confirmed = True
        case plan.Acquire(count, _):
            view.requested += count
        case plan.Release(node_ids, _):
            for node_id in node_ids:
                view.nodes[node_id].state = NodeState.GONE
        case plan.ChargeRestart():
            view.restarts += 1
        case plan.MarkBelowMinimum(since):
            view.below_min_since = since


def _start_generation(view: JobView, members: list[str], now: float) -> None:
    view.generation += 1
    view.members, view.exits = Members(members), {}
    view.slots = {node_id: index for index, node_id in enumerate(members)}
    view.next_slot = len(members)
    view.stopping_nodes = set()
    view.inprocess_ranks, view.inprocess_confirmed = set(), False
    view.finished_at = None
    view.state, view.state_since, view.stopping_since = JobState.RUNNING, now, None


def _reform(view: JobView, action: plan.Reform) -> None:
    members = list(action.members)
    replaced = set(view.members) - (set(members) - set(action.added))
    for node_id in replaced:
        for rank in view.ranks_of(node_id):
            view.exits.pop(rank, None)
        view.slots.pop(node_id, None)
        view.stopping_nodes.discard(node_id)
    for offset, node_id in enumerate(action.added):
        view.slots[node_id] = view.next_slot + offset
    view.next_slot += len(action.added)
    view.members = Members(members)
    view.generation += 1


# events (runner.JobRunner._apply) --------------------------------------------------------
def on_node_changed(view: JobView, node: NodeView) -> None:
    view.nodes[node.id] = node


def on_nodes_created(view: JobView, nodes: list[NodeView], asked: int) -> None:
    view.requested = max(0, view.requested - asked)
    for node in nodes:
        view.nodes.setdefault(node.id, node)


def on_worker_exited(view: JobView, exit_: WorkerExit) -> None:
    """Only a current rank of a member counts; the first report wins. (The runner also
    checks the worker's generation: the simulator reports only current workers' exits.)"""
    if exit_.node_id in view.members and exit_.rank in view.ranks_of(exit_.node_id):
        view.exits.setdefault(exit_.rank, exit_)


def on_worker_finished(view: JobView, now: float) -> None:
    if view.finished_at is None:
        view.finished_at = now
