"""Routing what nodes and agents report to the job it concerns: node changes, worker exits and
reports to the job's reconciler, log lines to the store and their followers."""

from __future__ import annotations

import collections
import json
import time
from collections.abc import Iterable, Mapping

import structlog

from contract import events as ev
from contract.control import WORKER_CHECKPOINT, WORKER_FINISHED, WORKER_INPROCESS, WORKER_RESTORED
from coord.v1 import agent_pb2
from coordinator.bus import Bus
from coordinator.logbudget import LogBudget
from coordinator.logwriter import LogWriter
from coordinator.reconciler.events import (NodeChanged, NodesForgotten, WorkerExited,
                                           WorkerExits, WorkerFinished, WorkerInProcess)
from coordinator.reconciler.resume import CheckpointCommitted, WorkerRestored
from coordinator.reconciler.runner import JobRunner
from coordinator.reconciler.view import NodeView, WorkerExit
from coordinator.store import LogRecord, NodeRecord

# What a worker's control lines tell the job's reconciler (see agent/control.py).
_WORKER_REPORTS = {WORKER_INPROCESS: WorkerInProcess, WORKER_FINISHED: WorkerFinished}
_STEP_REPORTS = {WORKER_CHECKPOINT: CheckpointCommitted, WORKER_RESTORED: WorkerRestored}
log = structlog.get_logger("coordinator.routing")


class Router:
    def __init__(self, runners: Mapping[str, JobRunner], logs: LogWriter, bus: Bus,
                 log_budget: LogBudget):
        self.runners, self.logs, self.bus, self.log_budget = runners, logs, bus, log_budget

    def on_node_change(self, node: NodeRecord, view: NodeView) -> None:
        if node.job_id and (runner := self.runners.get(node.job_id)):
            runner.post(NodeChanged(view))

    def on_nodes_forgotten(self, job_id: str, node_ids: tuple[str, ...]) -> None:
        """Dead nodes left the registry: the job's view drops them (members it keeps)."""
        if runner := self.runners.get(job_id):
            runner.post(NodesForgotten(node_ids))

    def on_worker_exits(self, node_id: str,
                        changes: Iterable[agent_pb2.WorkerStateChange]) -> None:
        """Exits an agent reports together: one `WorkerExits` per job they concern."""
        now, by_job = time.time(), collections.defaultdict(list)
        for msg in changes:
            code = msg.exit_code if msg.phase == agent_pb2.WORKER_PHASE_EXITED else 127
            by_job[msg.job_id].append(WorkerExited(msg.generation, WorkerExit(
                node_id, msg.rank, code, now)))
        for job_id, exits in by_job.items():
            if runner := self.runners.get(job_id):
                runner.post(WorkerExits(tuple(exits)))

    async def on_logs(self, node: NodeRecord, batch: agent_pb2.LogBatch, seq: int) -> None:
        """Store the message's lines (the node's applied sequence moves with them), then
        pass them to their followers."""
        lines = [LogRecord(job_id=l.job_id, generation=l.generation, node_id=node.id,
                           rank=l.rank, stream=l.stream, seq=l.seq,
                           time=l.time.ToSeconds() + l.time.nanos / 1e9 if l.HasField("time")
                           else time.time(), text=l.text)
                 for l in batch.lines if l.job_id == node.job_id and l.job_id in self.runners]
        for record in await self.logs.append(node, await self.log_budget.admit(lines), seq):
            self.bus.publish("logs", record.job_id, record)

    async def on_agent_event(self, node_id: str, msg: agent_pb2.AgentEvent) -> None:
        if not (runner := self.runners.get(msg.job_id)):
            return
        data = _json_object(msg.data_json)
        rank, step = data.get("rank"), data.get("step")
        if msg.kind in _WORKER_REPORTS:
            if isinstance(rank, int):
                runner.post(_WORKER_REPORTS[msg.kind](msg.generation, node_id, rank))
            return
        if msg.kind in _STEP_REPORTS:
            if isinstance(rank, int) and isinstance(step, int) and step >= 0:
                runner.post(_STEP_REPORTS[msg.kind](msg.generation, node_id, rank, step))
            return
        if not ev.forwardable(msg.kind):  # an agent may not write what coordd decides
            log.warning("agent.event_refused", node=node_id, kind=msg.kind[:80])
            return
        # node.leaving, spot.rebalance, or what else an agent reports: recorded as it names it
        await runner.event(msg.kind, f"{node_id}: {msg.message}", ev.FORWARDED(node=node_id))


def _json_object(text: str) -> dict:
    """An agent event's data; {} for anything but a JSON object (an agent of another
    version, or a bad one, must not end its node's stream)."""
    try:
        data = json.loads(text or "{}")
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}
