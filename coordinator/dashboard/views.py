"""What the pages show, as JSON-ready dicts: a job's summary (the row of the jobs list), its
detail, and a node's row. Jobs and nodes go through the same conversion `coord status -o json`
uses (env values masked), then get the dashboard's derived figures."""

from __future__ import annotations

import json
import time
from typing import Any

from contract import events as ev
from contract.states import NodeState
from coordinator import convert
from coordinator.client.cliout import job_dict
from coordinator.client.sdktypes import Job, Node, as_dict
from coordinator.dashboard import history
from coordinator.store import EventRecord, JobRecord, LogRecord, NodeRecord

NOTICE_STATES = (NodeState.DRAINING,)  # a spot notice or drain announced, not yet left


def job_summary(record: JobRecord, events: list[EventRecord],
                points: list[history.Point]) -> dict[str, Any]:
    """A jobs-list row: state, nodes held / target / min, generation, goodput, steps/s, times."""
    nodes = _spec(record).get("nodes", {})
    started = next((e.time for e in events if e.kind == ev.GENERATION_STARTED), None)
    finished = record.updated_at if record.state.terminal else None
    members = history.members_over_time(events, finished or time.time())
    reforms = history.reformations(events, points)
    return {
        "id": record.id, "name": record.name, "state": str(record.state),
        "generation": record.generation, "nodes_held": len(record.node_ids),
        "nodes_target": nodes.get("count"), "nodes_min": nodes.get("min") or nodes.get("count"),
        "goodput": history.goodput(members, reforms, points),
        "steps_per_s": None if finished else history.steps_per_s(points),
        "step": points[-1].step if points else None,
        "created": record.created_at, "started": started, "finished": finished,
        "restarts": record.restarts, "reason": record.reason, "reformations": len(reforms)}


def job_detail(record: JobRecord, events: list[EventRecord], points: list[history.Point],
               nodes: list[dict[str, Any]]) -> dict[str, Any]:
    """The job page: the summary, the `coord status` view, the re-formations, the series."""
    summary = job_summary(record, events, points)
    end = summary["finished"] or time.time()
    return {
        "summary": summary,
        "job": job_dict(Job.from_proto(convert.job(record))),
        "reformations": history.reformations(events, points),
        "members": history.members_over_time(events, end),
        "steps": [[p.time, p.step] for p in points],
        "curves": history.curves(points),
        "events": [event_row(e) for e in events],
        "nodes": nodes,
        "now": end}


def event_row(event: EventRecord) -> dict[str, Any]:
    """`unreadable`: why its data does not fit its kind ("" when it does, or the kind is one
    this coordd does not know)."""
    payload = ev.parse(event.kind, event.data_json)
    return {"seq": event.seq, "time": event.time, "kind": event.kind,
            "generation": event.generation, "message": event.message,
            "unreadable": payload.error if isinstance(payload, ev.Unknown) else ""}


def node_row(record: NodeRecord, heartbeat_age_s: float | None) -> dict[str, Any]:
    """`heartbeat_age_s`: from the agent's open stream; None: from the stored record."""
    node = as_dict(Node.from_proto(convert.node(record)))
    market = record.provider_data.get("market") or ("on-demand" if record.provider == "aws"
                                                     else "")
    if heartbeat_age_s is None and record.last_heartbeat:
        heartbeat_age_s = time.time() - record.last_heartbeat
    return {**node, "market": market, "notice": record.state in NOTICE_STATES,
            "heartbeat_age_s": None if heartbeat_age_s is None else round(heartbeat_age_s, 1)}


def log_row(line: LogRecord) -> dict[str, Any]:
    return {"id": line.id, "time": line.time, "node": line.node_id, "rank": line.rank,
            "stream": line.stream, "generation": line.generation, "text": line.text}


def _spec(record: JobRecord) -> dict[str, Any]:
    try:
        spec = json.loads(record.spec_json or "{}")
    except ValueError:
        return {}
    return spec if isinstance(spec, dict) else {}
