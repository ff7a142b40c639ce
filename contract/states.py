"""The job and node state machines: one enum each, every legal transition in one table."""

from __future__ import annotations

import enum

from coord.v1 import types_pb2


class JobState(enum.StrEnum):
    PENDING = "PENDING"
    PROVISIONING = "PROVISIONING"
    RUNNING = "RUNNING"
    RECONFIGURING = "RECONFIGURING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    UNKNOWN = "UNKNOWN"  # SDK only: a state this client does not know (a newer coordd)

    @property
    def terminal(self) -> bool:
        return self in TERMINAL_JOB_STATES

    def to_proto(self) -> int:
        return types_pb2.JobState.Value(f"JOB_STATE_{self.value}")


TERMINAL_JOB_STATES = frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED})

_J = JobState
JOB_TRANSITIONS: dict[JobState, frozenset[JobState]] = {
    _J.PENDING: frozenset({_J.PROVISIONING, _J.FAILED, _J.CANCELLED}),
    _J.PROVISIONING: frozenset({_J.RUNNING, _J.FAILED, _J.CANCELLED}),
    _J.RUNNING: frozenset({_J.RECONFIGURING, _J.SUCCEEDED, _J.FAILED, _J.CANCELLED}),
    _J.RECONFIGURING: frozenset({_J.RUNNING, _J.FAILED, _J.CANCELLED}),
    _J.SUCCEEDED: frozenset(),
    _J.FAILED: frozenset(),
    _J.CANCELLED: frozenset(),
    _J.UNKNOWN: frozenset(),
}


class NodeState(enum.StrEnum):
    JOINING = "JOINING"
    READY = "READY"
    ASSIGNED = "ASSIGNED"
    DRAINING = "DRAINING"
    SUSPECT = "SUSPECT"
    LOST = "LOST"
    GONE = "GONE"
    UNKNOWN = "UNKNOWN"  # SDK only: a state this client does not know (a newer coordd)

    @property
    def alive(self) -> bool:
        return self in (NodeState.READY, NodeState.ASSIGNED, NodeState.DRAINING, NodeState.SUSPECT)

    def to_proto(self) -> int:
        return types_pb2.NodeState.Value(f"NODE_STATE_{self.value}")


_N = NodeState
NODE_TRANSITIONS: dict[NodeState, frozenset[NodeState]] = {
    _N.JOINING: frozenset({_N.READY, _N.LOST, _N.GONE}),
    _N.READY: frozenset({_N.ASSIGNED, _N.DRAINING, _N.SUSPECT, _N.LOST, _N.GONE}),
    _N.ASSIGNED: frozenset({_N.READY, _N.DRAINING, _N.SUSPECT, _N.LOST, _N.GONE}),
    _N.DRAINING: frozenset({_N.READY, _N.SUSPECT, _N.LOST, _N.GONE}),
    _N.SUSPECT: frozenset({_N.READY, _N.ASSIGNED, _N.DRAINING, _N.LOST, _N.GONE}),
    _N.LOST: frozenset({_N.GONE}),
    _N.GONE: frozenset(),
    _N.UNKNOWN: frozenset(),
}


class IllegalTransition(RuntimeError):
    """A bug: code asked for a transition the table does not allow."""


def check_job_transition(old: JobState, new: JobState) -> None:
    if new not in JOB_TRANSITIONS[old]:
        raise IllegalTransition(f"job {old} -> {new}")


def check_node_transition(old: NodeState, new: NodeState) -> None:
    if new not in NODE_TRANSITIONS[old]:
        raise IllegalTransition(f"node {old} -> {new}")
