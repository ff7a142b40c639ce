"""The reconciler's loop for one job: the only part of it that does I/O.

Each turn feeds what arrived through `evolve`, asks `decide`, and for each action: computes
the next view, the events it appends and the effects it has (all pure); commits the job row,
the events and the effects' intents in one transaction (the outbox); then performs each effect
through the ports and marks it done. A coordd killed anywhere in between performs, at its
next start, every intent not marked done (effects are safe to repeat: see effects.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
from typing import Any

import structlog

from contract import events as ev
from contract.errors import PartialLaunch
from contract.spec import JobSpec
from contract.states import JobState, NodeState, check_job_transition
from coordinator.faults import fault_point
from coordinator.reconciler import effects as fx
from coordinator.reconciler import journal, plan
from coordinator.reconciler.decide import decide
from coordinator.reconciler.events import (Event, FailJob, NodesCreated, WorkerFinished,
                                           WorkerInProcess, coalesce)
from coordinator.reconciler.ports import Ports
from coordinator.reconciler.reduce import evolve
from coordinator.reconciler.resume import (NO_CHECKPOINT, CheckpointCommitted, ResumeState,
                                           WorkerRestored)
from coordinator.reconciler.view import JobView, failure_cause
from coordinator.store import JobRecord

log = structlog.get_logger("coordinator.reconciler")
TICK_S = 0.25
SETUP_RANK = -1  # the rank a node's `setup` output is logged under
# Actions that change only the view: nothing to persist (a restart is charged with the
# transition or re-formation that follows it).
_VIEW_ONLY = (plan.MarkBelowMinimum, plan.ChargeRestart)
_CONNECTED = (NodeState.READY, NodeState.ASSIGNED, NodeState.DRAINING)


class JobRunner:
    def __init__(self, record: JobRecord, spec: JobSpec, view: JobView, ports: Ports):
        self.record, self.spec, self.view, self.ports = record, spec, view, ports
        self.queue: asyncio.Queue[Event] = asyncio.Queue()
        self.log = log.bind(job=record.id, name=record.name)
        self.resume = ResumeState()
        self._pending: list[tuple[int, fx.Effect]] = []  # intents a crash left undone
        self._tasks: set[asyncio.Task] = set()

    def post(self, event: Event) -> None:
        self.queue.put_nowait(event)

    async def run(self) -> None:
        await self._restore_reports()
        self._pending = await self.ports.store.pending_intents(self.record.id)
        if self.resume.expected_from is not None:
            await self.event(ev.JOB_RESUMING, self.resume.resuming_message(),
                             ev.JobResuming(checkpoint_step=self.resume.expected_from))
        while not self.view.state.terminal:
            for event in await self._heard():
                await self._record(event)
                self._evolve(event)
            self.ports.metrics.reconciler_turn()
            fault_point("reconciler.turn")
            await self._redrive()
            for action in decide(self.view, self.ports.clock.now()):
                await self._act(action)
        self._close_feeds()

    async def _heard(self) -> list[Event]:
        """Everything queued when the first event arrives (or none by the tick), worker exits
        heard in a row merged: a burst (a thousand nodes' exits) costs one decision, not one
        per event."""
        # asyncio.timeout, not wait_for: on Python 3.11 wait_for drops a cancel that
        # lands as an event arrives, and coordd's stop would wait on this loop for ever.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(TICK_S):
                first = await self.queue.get()
                return coalesce([first] + [self.queue.get_nowait()
                                           for _ in range(self.queue.qsize())])
        return []

    def _close_feeds(self) -> None:
        """The job ended: its followers' streams end too."""
        self.ports.feed.close("events", self.record.id)
        self.ports.feed.close("logs", self.record.id)

    def _evolve(self, event: Event) -> None:
        self.view = evolve(self.view, event, self.ports.clock.now())

    async def _restore_reports(self) -> None:
        """After a coordd restart: what the running workers reported once and will not say
        again (joined the quorum, trained to the end, auto mode confirmed), from the events.
        The epoch, the worker generation and the slots come from the job row."""
        now, gen = self.ports.clock.now(), self.view.worker_generation
        for event in await self.ports.store.events_after(self.record.id):
            payload = ev.parse(event.kind, event.data_json)
            if isinstance(payload, ev.Unknown) and payload.error:
                self.log.warning("event.unreadable", seq=event.seq, error=payload.error)
            elif (report := _report(event.kind, payload, gen)) is not None:
                self.view = evolve(self.view, report,
                                   event.time if event.kind == ev.TRAINING_FINISHED else now)

    # inputs recorded before they count -----------------------------------------------------
    async def _record(self, event: Event) -> None:
        """Persist, before it counts, an input a restarted coordd would not hear again: a
        worker says only once that it took part in a step, and that it trained to the end."""
        if isinstance(event, (CheckpointCommitted, WorkerRestored)):
            return await self._record_checkpoint(event)
        if not isinstance(event, (WorkerInProcess, WorkerFinished)) or not self.view.counts(
                event.generation, event.node_id):
            return
        where = ev.ReplicaReport(worker_generation=event.generation, node=event.node_id,
                                 rank=event.rank)
        if isinstance(event, WorkerInProcess) and event.rank not in self.view.inproc.joined_ranks:
            await self.event(ev.INPROCESS_JOINED, f"{event.node_id}: worker {event.rank} took "
                             "part in a step as an in-process replica", where)
        elif (isinstance(event, WorkerFinished)
              and event.rank not in self.view.inproc.finished_ranks):
            await self.event(ev.TRAINING_FINISHED, f"{event.node_id}: worker {event.rank} "
                             "trained to the last step", where)

    async def _record_checkpoint(self, event: CheckpointCommitted | WorkerRestored) -> None:
        """A generation's first checkpoint, and the step its workers resumed from, as events
        (what a restarted coordd needs to know that the job can resume)."""
        where = ev.StepReport(worker_generation=event.generation, step=event.step)
        if isinstance(event, CheckpointCommitted):
            if self.resume.first_checkpoint(event):
                await self.event(ev.CHECKPOINT_COMMITTED, f"{event.node_id}: worker "
                                 f"{event.rank} committed a checkpoint of step {event.step}",
                                 where)
        elif self.view.counts(event.generation, event.node_id) and self.resume.restored(event):
            await self.event(ev.TRAINING_RESUMED, f"{event.node_id}: worker {event.rank} resumed "
                             f"from the checkpoint of step {event.step}", where)
        if self.resume.started_over:
            self._evolve(FailJob(self.resume.started_over))

    # actions -----------------------------------------------------------------------------
    async def _act(self, action: plan.Action) -> None:
        old, now = self.view, self.ports.clock.now()
        new = evolve(old, action, now)
        if isinstance(action, _VIEW_ONLY):
            self.view = new
            return
        master = self._master(new, action)
        effects = fx.effects_of(old, action, new, master)
        entries = journal.entries(old, action, new, now, master)
        intents = await self._save(old, action, new, entries,
                                   [e for e in effects if fx.durable(e)])
        self._observe(old, action, new, now)
        for effect in effects:
            if not fx.durable(effect):
                await self._perform(effect)
        for _, effect in intents:
            await self._send(effect, point=_point(action))
        # One write for all: an intent performed but not yet marked is only performed again
        # (idempotently) after a crash, and per-intent writes would grow with the job's nodes.
        await self.ports.store.intents_done([intent_id for intent_id, _ in intents])

    def _master(self, view: JobView, action: plan.Action) -> tuple[str, int]:
        """The rendezvous address, chosen once per generation (a joiner uses the first
        member's, where in-process mode does not use it)."""
        if not isinstance(action, (plan.StartGeneration, plan.Reform)) or not view.members:
            return ("", 0)
        return self.ports.agents.master(view.nodes[view.members[0]])

    async def _save(self, old: JobView, action: plan.Action, new: JobView,
                    entries: list[journal.Entry],
                    intents: list[fx.Effect]) -> list[tuple[int, fx.Effect]]:
        """Commit the decision, then make it the runner's view; the intents, numbered."""
        self._sync_record(new)
        if isinstance(action, plan.Transition):
            check_job_transition(old.state, action.to)
            if action.reason or action.to.terminal:
                self.record.reason = action.reason
            if action.to == JobState.FAILED:
                self.record.failure = await self._failure_detail()
        elif isinstance(action, plan.StartGeneration):
            check_job_transition(old.state, JobState.RUNNING)
        records, ids = await self.ports.store.commit(self.record, entries, intents)
        self.view = new
        fault_point(f"{_point(action)}.committed")
        for record in records:
            self.ports.feed.publish("events", self.record.id, record)
            self.log.info(record.kind, message=record.message, generation=record.generation,
                          **json.loads(record.data_json))
        return list(zip(ids, intents, strict=True))

    def _sync_record(self, view: JobView) -> None:
        r = self.record
        r.state, r.generation, r.restarts = view.state, view.epoch, view.restarts
        r.node_ids, r.worker_generation = list(view.members), view.worker_generation
        r.next_slot, r.slots = view.next_slot, dict(view.slots)

    def _observe(self, old: JobView, action: plan.Action, new: JobView, now: float) -> None:
        metrics = self.ports.metrics
        if old.state != new.state:
            metrics.job_transition(old.state, new.state)
        if isinstance(action, plan.StartGeneration) and old.state == JobState.RECONFIGURING:
            metrics.reconfigured(old.reconfigure_cause, journal.took(old, now))
        elif isinstance(action, plan.Reform):
            metrics.reformed(action.cause)

    # effects -----------------------------------------------------------------------------
    async def _redrive(self) -> None:
        """Intents a crash left undone, each once its node is back (or gone)."""
        waiting, done = [], []
        for intent_id, effect in self._pending:
            node = self.view.nodes.get(getattr(effect, "node_id", ""))
            if isinstance(effect, fx.NODE_EFFECTS) and node is not None and (
                    node.state not in _CONNECTED and node.state not in (NodeState.LOST,
                                                                        NodeState.GONE)):
                waiting.append((intent_id, effect))
            else:
                await self._send(effect, point="redrive")
                done.append(intent_id)
        await self.ports.store.intents_done(done)
        self._pending = waiting

    async def _send(self, effect: fx.Effect, point: str) -> None:
        await self._perform(effect)
        fault_point(f"{point}.{type(effect).__name__.lower()}.sent")

    async def _perform(self, effect: fx.Effect) -> None:
        agents, job = self.ports.agents, self.record.id
        match effect:
            case fx.Launch(node_id, generation, master):
                node = self.view.nodes.get(node_id)
                if node is not None and node.state not in (NodeState.LOST, NodeState.GONE):
                    await agents.launch(self.record, self.spec, self.view, generation, node_id,
                                        master)
            case fx.StopWorkers(node_id, epoch, reason, grace_s):
                await agents.stop_workers(node_id, job, epoch, reason, grace_s)
            case fx.TellReformed(node_id, epoch, dropped):
                agents.tell_reformed(node_id, job, epoch, dropped)
            case fx.ReleaseNode(node_id, reason):
                await agents.release(node_id, reason)
            case fx.StopQuorum():
                await self.ports.quorum.stop(job)
            case fx.AcquireNodes(count):
                self._spawn(self._acquire(count))

    async def _acquire(self, count: int) -> None:
        try:
            created = await self.ports.provider.acquire(self.record, self.spec, count)
        except PartialLaunch as exc:  # some came up: keep them, ask again for the rest
            await self.event(ev.PROVIDER_ERROR, f"provider added {len(exc.launched)} of "
                             f"{count} node(s): {exc}", ev.ProviderFailed(error=str(exc)))
            created = exc.launched
        except Exception as exc:  # any provider failure: record it, retry after a pause
            await self.event(ev.PROVIDER_ERROR, f"provider could not add nodes: {exc}",
                             ev.ProviderFailed(error=str(exc)))
            await asyncio.sleep(self.ports.provider.retry_s)
            created = []
        self.post(NodesCreated(tuple(created), count))

    def _spawn(self, coro) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # coordd stopping ---------------------------------------------------------------------
    async def on_coordd_stop(self) -> None:
        """coordd stops cleanly (this runner's loop has ended): say what that does to the job,
        and do it. Only local nodes stop with coordd; other providers' agents reconnect."""
        for task in list(self._tasks):
            task.cancel()
        state, r = self.record.state, self.resume
        if state.terminal:
            return
        if self.spec.resources.provider != "local":
            self.log.info("job.continues", message=f"job {self.record.id} keeps running on its "
                          f"{self.spec.resources.provider} nodes, which reconnect to coordd")
        elif state not in (JobState.RUNNING, JobState.RECONFIGURING):
            self.log.info("job.waits", message=f"job {self.record.id} ({state}) had not "
                          "started: it goes on at coordd's next start")
        elif r.checkpoint_step is not None:
            await self.event(ev.COORDD_STOPPED, r.stop_message(),
                             ev.CoorddStopped(resume=True, checkpoint_step=r.checkpoint_step))
            self.log.warning("job.interrupted", message=f"job {self.record.id}: "
                             f"{r.stop_message()}")
        else:
            await self.event(ev.COORDD_STOPPED, NO_CHECKPOINT, ev.CoorddStopped(resume=False))
            await self.fail(NO_CHECKPOINT, cause="coordd_stopped")

    async def fail(self, reason: str, cause: str) -> None:
        """Fail the job now, outside the loop (it was cancelled or crashed, perhaps in the
        middle of a write: start from the store)."""
        self.record = await self.ports.store.get_job(self.record.id)
        if not self.record.state.terminal and not self.view.state.terminal:
            await self._act(plan.Transition(JobState.FAILED, reason, cause=cause))
        self._close_feeds()
        self.log.warning("job.failed", message=f"job {self.record.id}: {reason}")

    async def _failure_detail(self) -> dict[str, Any]:
        failures = sorted((e for e in self.view.exits.values() if e.code != 0),
                          key=lambda e: e.time)
        if not (first := failure_cause(failures)):
            return {}
        generation = self.view.worker_generation
        for rank in (first.rank, SETUP_RANK):  # a worker that never started: the setup's say
            tail = [line.text for line in await self.ports.store.read_logs(
                self.record.id, node_id=first.node_id, rank=rank, tail=20)
                if line.generation == generation]
            if tail:
                break
        return {"workers": [dataclasses.asdict(f) | {"generation": generation}
                            for f in failures], "log_tail": tail}

    async def event(self, kind: str, message: str, payload: ev.Payload) -> None:
        record = await self.ports.store.append_event(self.record.id, kind, self.record.generation,
                                                     message, payload)
        self.ports.feed.publish("events", self.record.id, record)
        self.log.info(kind, message=message, generation=self.record.generation,
                      **json.loads(record.data_json))


def _point(action: plan.Action) -> str:
    """An action's name in fault points: startgeneration, reform.node_lost, ..."""
    name = type(action).__name__.lower()
    return f"{name}.{action.cause}" if isinstance(action, plan.Reform) else name


def _report(kind: str, payload: ev.Payload | ev.Unknown,
            generation: int) -> Event | plan.Action | None:
    """What a stored event reported once, where it concerns the running worker generation."""
    match payload:
        case ev.InProcessConfirmed(worker_generation=g) if g == generation:
            return plan.ConfirmInProcess()
        case ev.ReplicaReport(worker_generation=g, node=node, rank=rank) if g == generation:
            report = WorkerInProcess if kind == ev.INPROCESS_JOINED else WorkerFinished
            return report(g, node, rank)
    return None
