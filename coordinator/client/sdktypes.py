"""What the SDK hands out: plain dataclasses whose states are Python enums, never the wire's
integers, so `print(job.state)` says `SUCCEEDED` and `job.state is JobState.SUCCEEDED` holds.

Each type is built from its gRPC message in one place (`from_proto`); `as_dict` gives the
JSON-ready form `coord --output json` prints.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import json
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp

from contract import events as ev
from contract.states import JobState, NodeState
from coord.v1 import jobs_pb2, types_pb2


class LogStream(enum.StrEnum):
    STDOUT = "STDOUT"
    STDERR = "STDERR"
    UNSPECIFIED = "UNSPECIFIED"
    UNKNOWN = "UNKNOWN"  # a stream this client does not know (a newer coordd)


def _enum(cls: type[enum.StrEnum], proto_enum, prefix: str, value: int):
    """The enum member of a wire value; UNKNOWN for a number this client does not know (a
    newer coordd) or one the enum has no member for (unset: 0)."""
    try:
        return cls(proto_enum.Name(value).removeprefix(prefix))
    except ValueError:
        return cls("UNKNOWN")


def _time(ts: Timestamp) -> dt.datetime:
    return dt.datetime.fromtimestamp(ts.ToNanoseconds() / 1e9, tz=dt.UTC)


def as_dict(obj: Any) -> dict[str, Any]:
    """A dataclass as JSON-ready values: enums by name, times in ISO 8601 (UTC). Fields marked
    `derived` (a typed view of another field) are left out."""
    return {f.name: plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)
            if not f.metadata.get("derived")}


def plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value):
        return as_dict(value)
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, dt.datetime):
        return value.isoformat()
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


@dataclasses.dataclass(frozen=True)
class WorkerExit:
    """One rank's exit as coordd recorded it (`exit_code` negative: killed by that signal)."""

    node_id: str
    rank: int
    exit_code: int
    generation: int


@dataclasses.dataclass(frozen=True)
class Job:
    id: str
    name: str
    state: JobState
    generation: int
    reason: str                 # why the job is in its state (failures, cancel)
    spec_json: str              # the validated job spec coordd runs, as JSON
    created_at: dt.datetime
    updated_at: dt.datetime
    node_ids: list[str]         # current membership, ordered by group rank
    restarts: int               # restarts charged to max_restarts
    failed_workers: list[WorkerExit]
    failure_log_tail: list[str]  # last log lines of the first failed worker

    @property
    def spec(self) -> dict[str, Any]:
        return json.loads(self.spec_json or "{}")

    @property
    def terminal(self) -> bool:
        return self.state.terminal

    @classmethod
    def from_proto(cls, m: types_pb2.Job) -> Job:
        return cls(m.id, m.name, _enum(JobState, types_pb2.JobState, "JOB_STATE_", m.state),
                   m.generation, m.reason, m.spec_json, _time(m.created_at), _time(m.updated_at),
                   list(m.node_ids), m.restarts,
                   [WorkerExit(w.node_id, w.rank, w.exit_code, w.generation)
                    for w in m.failed_workers], list(m.failure_log_tail))


@dataclasses.dataclass(frozen=True)
class Resources:
    cpus: int
    gpus: int
    memory_bytes: int
    software: list[str]         # packages that change what coord offers, e.g. "torchft"


@dataclasses.dataclass(frozen=True)
class Node:
    id: str
    host: str
    state: NodeState
    job_id: str                 # "" when the node is not assigned
    provider: str               # "local", "ssh", "aws", "slurm" or "static" (started by hand)
    resources: Resources
    last_heartbeat: dt.datetime
    machine: str = ""           # the provider's name for it: "slurm job 12 on c2"

    @classmethod
    def from_proto(cls, m: types_pb2.Node) -> Node:
        r = m.resources
        return cls(m.id, m.host, _enum(NodeState, types_pb2.NodeState, "NODE_STATE_", m.state),
                   m.job_id, m.provider, Resources(r.cpus, r.gpus, r.memory_bytes,
                                                   list(r.software)), _time(m.last_heartbeat),
                   m.machine)


@dataclasses.dataclass(frozen=True)
class NodePage:
    """One page of nodes (oldest first), how many match in all, and how many each job has in
    each state (job "" for nodes of no job)."""
    nodes: list[Node]
    total: int
    counts: dict[tuple[str, NodeState], int]

    @classmethod
    def from_proto(cls, m: jobs_pb2.ListNodesResponse) -> NodePage:
        return cls([Node.from_proto(n) for n in m.nodes], m.total,
                   {(c.job_id, _enum(NodeState, types_pb2.NodeState, "NODE_STATE_", c.state)):
                    c.count for c in m.counts})

    def by_state(self) -> dict[NodeState, int]:
        states: dict[NodeState, int] = {}
        for (_, state), count in self.counts.items():
            states[state] = states.get(state, 0) + count
        return states


@dataclasses.dataclass(frozen=True)
class JobEvent:
    """Something that happened to a job. `kind` is one of the names listed in docs/events.md
    ("state", "generation.started", ...); `data` holds its details as stored, e.g.
    `data["cause"]`, and `payload` the same typed (`contract.events`): its kind's model, or
    `contract.events.Unknown` for a kind this client does not know (a newer coordd) or a row
    that does not fit its kind's model (`payload.error` says why)."""

    seq: int
    job_id: str
    time: dt.datetime
    kind: str
    generation: int
    message: str                # one line for a person
    data: dict[str, Any]
    payload: ev.Payload | ev.Unknown = dataclasses.field(compare=False, repr=False,
                                                         metadata={"derived": True})

    @classmethod
    def from_proto(cls, m: types_pb2.JobEvent) -> JobEvent:
        return cls(m.seq, m.job_id, _time(m.time), m.kind, m.generation, m.message,
                   ev.loads(m.data_json), ev.parse(m.kind, m.data_json))


@dataclasses.dataclass(frozen=True)
class LogLine:
    job_id: str
    generation: int
    node_id: str
    rank: int
    stream: LogStream
    seq: int                    # increasing within the job: the order lines were stored
    time: dt.datetime
    text: str

    @classmethod
    def from_proto(cls, m: types_pb2.LogLine) -> LogLine:
        return cls(m.job_id, m.generation, m.node_id, m.rank,
                   _enum(LogStream, types_pb2.LogStream, "LOG_STREAM_", m.stream), m.seq,
                   _time(m.time), m.text)


@dataclasses.dataclass(frozen=True)
class Reformation:
    """One change of a job's membership (see docs/generations.md). `kind` "restart": every
    worker started again (a new worker generation); "in_place": the running replicas re-formed
    without restarting (in-process mode: the worker generation stays). The first start of a
    job is a restart with cause "start"."""

    epoch: int                  # the membership epoch it began
    worker_generation: int      # what COORD_GENERATION says to the workers running after it
    kind: str                   # "restart" | "in_place"
    cause: str                  # start, node_lost, node_joined, node_leaving, worker_failed ...
    time: dt.datetime
    old_members: list[str]
    new_members: list[str]
    duration_s: float           # restart: RECONFIGURING -> RUNNING; in place: report -> done
    # Steps trained again: 0 in place (survivors keep their state); for a restart, None:
    # coordd sees the step it resumed from (`resumed_from`), not the last one trained.
    steps_lost: int | None
    resumed_from: int | None = None  # restart: the checkpoint step its workers resumed from


def reformations(events: list[JobEvent]) -> list[Reformation]:
    """A job's re-formations of either kind, oldest first, from its events (one whose row
    cannot be read is left out)."""
    resumed = {e.payload.worker_generation: e.payload.step for e in events
               if e.kind == ev.TRAINING_RESUMED and isinstance(e.payload, ev.StepReport)}
    found = []
    for e in events:
        p = e.payload
        if not isinstance(p, (ev.GenerationStarted, ev.GenerationReformed)):
            continue
        restart = isinstance(p, ev.GenerationStarted)
        worker_generation = e.generation if p.worker_generation is None else p.worker_generation
        found.append(Reformation(
            e.generation, worker_generation, "restart" if restart else "in_place", p.cause,
            e.time, list(p.old_members), list(p.new_members), p.took_s,
            None if restart else 0, resumed.get(worker_generation) if restart else None))
    return found
