"""Store records to wire messages."""

from __future__ import annotations

from google.protobuf.timestamp_pb2 import Timestamp

from coord.v1 import types_pb2
from coordinator.store import EventRecord, JobRecord, LogRecord, NodeRecord


def timestamp(seconds: float) -> Timestamp:
    ts = Timestamp()
    ts.FromNanoseconds(int(seconds * 1e9))
    return ts


def job(record: JobRecord) -> types_pb2.Job:
    failure = record.failure or {}
    return types_pb2.Job(
        id=record.id, name=record.name, state=record.state.to_proto(),
        generation=record.generation, reason=record.reason, spec_json=record.spec_json,
        created_at=timestamp(record.created_at), updated_at=timestamp(record.updated_at),
        node_ids=record.node_ids, restarts=record.restarts,
        failed_workers=[types_pb2.WorkerExit(node_id=w["node_id"], rank=w["rank"],
                                             exit_code=w["code"], generation=w["generation"])
                        for w in failure.get("workers", [])],
        failure_log_tail=failure.get("log_tail", []))


def node(record: NodeRecord) -> types_pb2.Node:
    r = record.resources
    return types_pb2.Node(
        id=record.id, host=record.host, state=record.state.to_proto(), job_id=record.job_id or "",
        provider=record.provider, machine=str(record.provider_data.get("machine", "")),
        resources=types_pb2.Resources(cpus=r.get("cpus", 0), gpus=r.get("gpus", 0),
                                      memory_bytes=r.get("memory_bytes", 0)),
        last_heartbeat=timestamp(record.last_heartbeat))


def event(record: EventRecord) -> types_pb2.JobEvent:
    return types_pb2.JobEvent(seq=record.seq, job_id=record.job_id, time=timestamp(record.time),
                              kind=record.kind, generation=record.generation,
                              message=record.message, data_json=record.data_json)


def log_line(record: LogRecord) -> types_pb2.LogLine:
    return types_pb2.LogLine(job_id=record.job_id, generation=record.generation,
                             node_id=record.node_id, rank=record.rank, stream=record.stream,
                             seq=record.id, time=timestamp(record.time), text=record.text)
