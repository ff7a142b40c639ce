"""The reconciler's loop for one job: feed events into the view, ask `decide`, act.

Each action is persisted (job row, then an event in the append-only log) before anything
is sent to agents or providers, so a crash never leaves an action done but unrecorded.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import time
from typing import TYPE_CHECKING, Any

import structlog

from coordinator.errors import PartialLaunch
from coordinator.reconciler import plan
from coordinator.reconciler.decide import decide
from coordinator.reconciler.resume import (CHECKPOINTED, NO_CHECKPOINT, RESUMED, RESUMING,
                                           STOPPED, CheckpointCommitted, ResumeState,
                                           WorkerRestored)
from coordinator.reconciler.view import JobView, NodeView, WorkerExit, failure_cause
from coordinator.spec import JobSpec
from coordinator.states import JobState, NodeState, check_job_transition
from coordinator.store import JobRecord

if TYPE_CHECKING:
    from coordinator.jobs import JobManager

log = structlog.get_logger("coordinator.reconciler")
TICK_S = 0.25
SETUP_RANK = -1  # the rank a node's `setup` output is logged under


@dataclasses.dataclass(frozen=True)
class NodeChanged:
    node: NodeView


@dataclasses.dataclass(frozen=True)
class NodesCreated:
    nodes: tuple[NodeView, ...]
    asked: int


@dataclasses.dataclass(frozen=True)
class WorkerExited:
    generation: int
    exit: WorkerExit


@dataclasses.dataclass(frozen=True)
class WorkerInProcess:
    """A worker took part in its first step as an in-process replica."""
    generation: int
    node_id: str
    rank: int


@dataclasses.dataclass(frozen=True)
class WorkerFinished:
    """An in-process replica trained to the last step: the job's training is done."""
    generation: int
    node_id: str
    rank: int


@dataclasses.dataclass(frozen=True)
class Cancel:
    reason: str


Event = (NodeChanged | NodesCreated | WorkerExited | WorkerInProcess | WorkerFinished | Cancel
         | CheckpointCommitted | WorkerRestored)
INPROCESS_JOINED = "inprocess.joined"
TRAINING_FINISHED = "training.finished"


class JobRunner:
    def __init__(self, record: JobRecord, spec: JobSpec, view: JobView, manager: JobManager):
        self.record, self.spec, self.view, self.m = record, spec, view, manager
        self.queue: asyncio.Queue[Event] = asyncio.Queue()
        self.log = log.bind(job=record.id, name=record.name)
        self._reconfigure_started = 0.0
        # The generation the running workers were started in: in-process re-formations move
        # the job's generation on, but its workers (and joiners) keep this one, which is
        # also the checkpoint fence.
        self.launch_generation = record.generation
        self.resume = ResumeState()

    async def _restore_membership(self) -> None:
        """After a coordd restart: the running workers' generation and each member's worker
        slot, from the newest membership event (in-process re-formations move the job's
        generation on without restarting workers, and joiners take fresh slots)."""
        latest, confirmed, joined, finished, highest = None, set(), [], [], -1
        events = await self.m.store.events_after(self.record.id)
        for event in events:
            if event.kind in ("generation.started", "generation.reformed"):
                latest = event
                floor = -1 if event.kind == "generation.started" else highest  # numbered anew
                highest = max([floor, *_slots(json.loads(event.data_json)).values()])
            elif event.kind == "inprocess.confirmed":
                confirmed.add(json.loads(event.data_json).get("worker_generation"))
            elif event.kind == INPROCESS_JOINED:
                data = json.loads(event.data_json)
                joined.append(WorkerInProcess(data.get("worker_generation"), data.get("node"),
                                              data.get("rank")))
            elif event.kind == TRAINING_FINISHED:
                finished.append((json.loads(event.data_json).get("worker_generation"),
                                 event.time))
        if latest is None:
            return
        data = json.loads(latest.data_json)
        self.launch_generation = data.get("worker_generation", latest.generation)
        self.view.inprocess_confirmed = self.launch_generation in confirmed
        # Each worker says once that it joined: those said before the restart still count.
        self.view.inprocess_ranks = {j.rank for j in joined if self._counts(j)}
        self.view.finished_at = min((t for g, t in finished if g == self.launch_generation),
                                    default=None)
        self.view.slots = {node: slot for node, slot in _slots(data).items()
                           if node in self.view.members}
        self.view.next_slot = highest + 1

    def post(self, event: Event) -> None:
        self.queue.put_nowait(event)

    async def run(self) -> None:
        await self._restore_membership()
        if self.resume.expected_from is not None:
            await self.event(RESUMING, self.resume.resuming_message(),
                             checkpoint_step=self.resume.expected_from)
        while not self.view.state.terminal:
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for drops a cancel that
            # lands as an event arrives, and coordd's stop would wait on this loop for ever.
            event = None
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(TICK_S):
                    event = await self.queue.get()
            if event is not None:
                await self._record(event)
                self._apply(event)
            for action in decide(self.view, time.time()):
                await self._act(action)
        self.m.bus.close("events", self.record.id)
        self.m.bus.close("logs", self.record.id)

    # events --------------------------------------------------------------------------
    def _counts(self, report: WorkerInProcess | WorkerFinished | WorkerRestored) -> bool:
        return (report.generation == self.launch_generation
                and report.node_id in self.view.members)

    async def _record(self, event: Event) -> None:
        """Persist, before it counts, an input a restarted coordd would not hear again: a
        worker says only once that it took part in a step, and that it trained to the end."""
        if isinstance(event, (CheckpointCommitted, WorkerRestored)):
            return await self._record_checkpoint(event)
        if not isinstance(event, (WorkerInProcess, WorkerFinished)) or not self._counts(event):
            return
        where = dict(worker_generation=event.generation, node=event.node_id, rank=event.rank)
        if isinstance(event, WorkerInProcess) and event.rank not in self.view.inprocess_ranks:
            await self.event(INPROCESS_JOINED, f"{event.node_id}: worker {event.rank} took "
                             "part in a step as an in-process replica", **where)
        elif isinstance(event, WorkerFinished) and self.view.finished_at is None:
            await self.event(TRAINING_FINISHED, f"{event.node_id}: worker {event.rank} "
                             "trained to the last step", **where)

    async def _record_checkpoint(self, event: CheckpointCommitted | WorkerRestored) -> None:
        """A generation's first checkpoint, and the step its workers resumed from, as events
        (what a restarted coordd needs to know that the job can resume)."""
        where = dict(worker_generation=event.generation, step=event.step)
        if isinstance(event, CheckpointCommitted):
            if self.resume.first_checkpoint(event):
                await self.event(CHECKPOINTED, f"{event.node_id}: worker {event.rank} committed "
                                 f"a checkpoint of step {event.step}", **where)
        elif self._counts(event) and self.resume.restored(event):
            await self.event(RESUMED, f"{event.node_id}: worker {event.rank} resumed from "
                             f"the checkpoint of step {event.step}", **where)
        if self.resume.started_over:
            self.view.fail_reason = self.resume.started_over

    async def on_coordd_stop(self) -> None:
        """coordd stops cleanly (this runner's loop has ended): say what that does to the job,
        and do it. Only local nodes stop with coordd; other providers' agents reconnect."""
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
            await self.event(STOPPED, r.stop_message(), resume=True,
                             checkpoint_step=r.checkpoint_step)
            self.log.warning("job.interrupted", message=f"job {self.record.id}: "
                             f"{r.stop_message()}")
        else:
            await self.event(STOPPED, NO_CHECKPOINT, resume=False)
            # The loop was cancelled, perhaps in the middle of a write: start from the store.
            self.record = await self.m.store.get_job(self.record.id)
            await self._transition(plan.Transition(JobState.FAILED, NO_CHECKPOINT,
                                                   cause="coordd_stopped"))
            self.log.warning("job.failed", message=f"job {self.record.id}: {NO_CHECKPOINT}")

    def _apply(self, event: Event) -> None:
        match event:
            case NodeChanged(node):
                self.view.nodes[node.id] = node
            case NodesCreated(nodes, asked):
                self.view.requested = max(0, self.view.requested - asked)
                for node in nodes:
                    self.view.nodes.setdefault(node.id, node)
            case WorkerExited(generation, exit_):
                # Only a current rank of a member counts (not one a restarted replica left).
                if (generation == self.launch_generation and exit_.node_id in self.view.members
                        and exit_.rank in self.view.ranks_of(exit_.node_id)):
                    self.view.exits.setdefault(exit_.rank, exit_)  # first report wins
            case WorkerInProcess():
                if self._counts(event):
                    self.view.inprocess_ranks.add(event.rank)
            case WorkerFinished():
                if self._counts(event) and self.view.finished_at is None:
                    self.view.finished_at = time.time()
            case Cancel(reason):
                self.view.cancel_reason = reason

    # actions -------------------------------------------------------------------------
    async def _act(self, action: plan.Action) -> None:
        match action:
            case plan.Transition():
                await self._transition(action)
            case plan.StartGeneration():
                await self._start_generation(action)
            case plan.StopGeneration(reason, grace_s):
                await self._stop_generation(reason, grace_s)
            case plan.Reform():
                await self._reform(action)
            case plan.StopNodes(node_ids, reason):
                self.view.stopping_nodes.update(node_ids)
                await self.event("nodes.stopping", f"stopping the workers of {', '.join(node_ids)}"
                                 f": {reason}; the others keep running", nodes=list(node_ids))
                for node_id in node_ids:
                    await self.m.nodes.stop_workers(node_id, self.record.id, self.view.generation,
                                                    reason)
            case plan.ConfirmInProcess():
                await self.event("inprocess.confirmed", "every worker took part in a step as "
                                 "an in-process replica: a node loss now re-forms them in place",
                                 worker_generation=self.launch_generation)
                self.view.inprocess_confirmed = True
            case plan.Acquire(count, reason):
                self.view.requested += count
                await self.event("nodes.requested", f"asking the provider for {count} node(s): "
                                 f"{reason}", count=count)
                self.m.spawn(self._acquire(count))
            case plan.Release(node_ids, reason):
                for node_id in node_ids:
                    self.view.nodes[node_id].state = NodeState.GONE
                    await self.m.nodes.release(node_id, reason)
            case plan.ChargeRestart():
                # persisted with the transition or re-formation that follows
                self.record.restarts += 1
                self.view.restarts = self.record.restarts
            case plan.MarkBelowMinimum(since):
                self.view.below_min_since = since

    async def _transition(self, action: plan.Transition) -> None:
        old, new = self.record.state, action.to
        check_job_transition(old, new)
        self.record.state = new
        if action.reason or new.terminal:
            self.record.reason = action.reason
        if new == JobState.FAILED:
            self.record.failure = await self._failure_detail()
        if new.terminal:
            await self.m.stop_quorum(self.record.id)
        await self.m.store.save_job(self.record)
        self.view.state, self.view.state_since = new, time.time()
        if new == JobState.RECONFIGURING:
            self.view.reconfigure_cause = action.cause
            self._reconfigure_started = time.time()
        await self.event("state", f"{old} -> {new}" + (f": {action.reason}" if action.reason else ""),
                         old=str(old), new=str(new), cause=action.cause, reason=action.reason)
        self.m.metrics.job_transition(old, new)

    async def _start_generation(self, action: plan.StartGeneration) -> None:
        old_state = self.record.state
        check_job_transition(old_state, JobState.RUNNING)
        members = list(action.node_ids)
        old_members = self.view.members
        self.record.generation += 1
        self.record.node_ids = members
        self.record.state = JobState.RUNNING
        await self.m.store.save_job(self.record)
        gen = self.record.generation
        master = self.view.nodes[members[0]]
        master_port = self.m.nodes.free_port(master.id) or master.free_port
        self.view.members, self.view.generation, self.view.exits = members, gen, {}
        self.view.slots = {node_id: index for index, node_id in enumerate(members)}
        self.view.next_slot = len(members)
        self.view.stopping_nodes = set()
        self.view.inprocess_ranks, self.view.inprocess_confirmed = set(), False
        self.view.finished_at = None
        self.launch_generation = gen
        self.view.state, self.view.state_since, self.view.stopping_since = (
            JobState.RUNNING, time.time(), None)
        took = time.time() - self._reconfigure_started if old_state == JobState.RECONFIGURING else 0
        await self.event(
            "generation.started",
            f"generation {gen} on {len(members)} node(s) ({action.cause}); "
            f"master {master.host}:{master_port}",
            cause=action.cause, old_members=old_members, new_members=members,
            world_size=len(members) * self.spec.nproc_per_node,
            master=f"{master.host}:{master_port}", took_s=round(took, 3))
        if old_state == JobState.RECONFIGURING:
            self.m.metrics.reconfigured(self.view.reconfigure_cause, took)
        await self.event("state", f"{old_state} -> RUNNING", old=str(old_state), new="RUNNING")
        self.m.metrics.job_transition(old_state, JobState.RUNNING)
        await self.m.launch(self.record, self.spec, self.view, gen, tuple(members))

    async def _reform(self, action: plan.Reform) -> None:
        """Record an in-process re-formation as a generation of its own, then start workers
        only on the added nodes (new ones, or members whose workers restart in place): they
        join the running quorum and heal from a peer."""
        old_members = self.view.members
        members = list(action.members)
        self.record.generation += 1
        self.record.node_ids = members
        await self.m.store.save_job(self.record)
        next_slot = self.view.next_slot
        replaced = sorted(set(old_members) - (set(members) - set(action.added)))
        # A replica's name as the trainer gives it to torchft: NODE_RANK.
        dropped = [f"{n}_{rank}" for n in replaced for rank in self.view.ranks_of(n)]
        # Dropped members, and members whose workers restart in place: their old ranks'
        # exits and slots go (a restarted replica never reuses a rank).
        for node_id in replaced:
            for rank in self.view.ranks_of(node_id):
                self.view.exits.pop(rank, None)
            self.view.slots.pop(node_id, None)
            self.view.stopping_nodes.discard(node_id)
        for offset, node_id in enumerate(action.added):
            self.view.slots[node_id] = next_slot + offset
        self.view.next_slot = next_slot + len(action.added)
        self.view.members, self.view.generation = members, self.record.generation
        await self.event(
            "generation.reformed",
            f"generation {self.record.generation}: in-process re-formation on {len(members)} "
            f"node(s) ({action.cause}: {action.reason}); surviving workers keep running",
            cause=action.cause, old_members=old_members, new_members=members,
            added=list(action.added), world_size=len(members) * self.spec.nproc_per_node,
            worker_generation=self.launch_generation, slots=dict(self.view.slots))
        self.m.metrics.reconfigurations.labels(action.cause).inc()
        for node_id in members:
            if dropped and node_id not in action.added:
                self.m.nodes.tell_reformed(node_id, self.record.id, self.record.generation,
                                           dropped)
        if action.added:
            await self.m.launch(self.record, self.spec, self.view, self.launch_generation,
                                action.added)

    async def _stop_generation(self, reason: str, grace_s: float | None) -> None:
        self.view.stopping_since = time.time()
        live = [m for m in self.view.members
                if self.view.nodes[m].state not in (NodeState.LOST, NodeState.GONE)]
        await self.event("generation.stopping", f"stopping generation {self.view.generation}: "
                         f"{reason}", nodes=live)
        for node_id in live:
            await self.m.nodes.stop_workers(node_id, self.record.id, self.view.generation, reason,
                                            grace_s)

    async def _acquire(self, count: int) -> None:
        try:
            created = await self.m.nodes.acquire(self.record, self.spec, count)
        except PartialLaunch as exc:  # some came up: keep them, ask again for the rest
            await self.event("provider.error", f"provider added {len(exc.launched)} of {count} "
                             f"node(s): {exc}", error=str(exc))
            created = exc.launched
        except Exception as exc:  # any provider failure: record it, retry after a pause
            await self.event("provider.error", f"provider could not add nodes: {exc}",
                             error=str(exc))
            await asyncio.sleep(self.m.settings.provider_retry_s)
            created = []
        self.post(NodesCreated(tuple(created), count))

    async def _failure_detail(self) -> dict[str, Any]:
        failures = sorted((e for e in self.view.exits.values() if e.code != 0),
                          key=lambda e: e.time)
        if not (first := failure_cause(failures)):
            return {}
        for rank in (first.rank, SETUP_RANK):  # a worker that never started: the setup's say
            tail = [line.text for line in await self.m.store.read_logs(
                self.record.id, node_id=first.node_id, rank=rank, tail=20)
                if line.generation == self.launch_generation]
            if tail:
                break
        return {"workers": [dataclasses.asdict(f) | {"generation": self.launch_generation}
                            for f in failures], "log_tail": tail}

    async def event(self, kind: str, message: str, **data: Any) -> None:
        record = await self.m.store.append_event(self.record.id, kind, self.record.generation,
                                                 message, data)
        self.m.bus.publish("events", self.record.id, record)
        self.log.info(kind, message=message, generation=self.record.generation, **data)


def _slots(data: dict[str, Any]) -> dict[str, int]:
    """A membership event's node -> replica slot (a generation's start: its rank order)."""
    return data.get("slots") or {n: i for i, n in enumerate(data.get("new_members", []))}
