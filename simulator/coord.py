"""coord's policies on the simulated cloud, run by the reconciler's real `decide` and `evolve`.

Only the clock, the provider and the agents are simulated. The cloud's news reaches the view
as the reconciler's own events (a node registers, is noticed, drops, is lost; workers exit,
join the quorum, finish), each applied by `evolve`; `decide` answers, and each action goes
through `evolve` and becomes the effects coordd's runner would perform (`effects_of`), carried
out here the way agents and workers would: workers start, stop at a step boundary, are killed,
exit because a peer vanished; nodes are asked for and handed back.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from contract.exits import PEER_LOST_EXIT
from contract.spec import JobSpec
from contract.states import JobState, NodeState
from coordinator.reconciler import effects as fx
from coordinator.reconciler import plan
from coordinator.reconciler.decide import STOP_SLACK_S, decide
from coordinator.reconciler.events import (Event, NodeChanged, NodesCreated, NodesForgotten,
                                           WorkerExited, WorkerExits, WorkerFinished,
                                           WorkerInProcess)
from coordinator.reconciler.policy import policy_for
from coordinator.reconciler.reduce import evolve
from coordinator.reconciler.view import JobView, NodeView, WorkerExit
from coordinator.settings import CoorddSettings
from simulator.cloud import SimNode
from simulator.engine import Timer
from simulator.errors import SimulationError
from simulator.model import WorkloadModel
from simulator.policy import PolicyRun
from simulator.traces import Trace

MAX_ROUNDS = 64  # decide answers [] again within a few rounds; more is a bug
EPSILON = 1e-6
_READY = NodeState.READY  # looked up once: on Python 3.11 an enum member's lookup is slow


@dataclasses.dataclass(eq=False, slots=True)
class Worker:
    """One node's workers (its ranks), started in one worker generation."""
    node_id: str
    generation: int
    ranks: range
    running: bool = False   # past its start-up, stepping
    exited: bool = False


class CoordRun(PolicyRun):
    def __init__(self, name: str, spec: JobSpec, mode: str, model: WorkloadModel,
                 trace: Trace, seed: int, settings: CoorddSettings | None = None) -> None:
        super().__init__(model, trace, spec.nodes.count, seed)
        self.name, self.settings = name, settings or CoorddSettings()
        # A node's workers start, stop and exit together here, so one rank stands for them:
        # decide's choices depend on nodes, never on how many ranks each runs.
        policy = dataclasses.replace(policy_for(spec, self.settings, mode), nproc_per_node=1)
        self.view = JobView(job_id="sim", state=JobState.PENDING, epoch=0, restarts=0,
                            policy=policy)
        self.workers: dict[str, Worker] = {}
        self.broken = False     # restart mode: the running generation lost a member
        self._wake: Timer | None = None
        self._done_with: set[str] = set()  # lost or handed back: to forget once not members
        self._exited: list[tuple[Worker, int]] = []  # this instant's exits, not yet reported
        self._batches: dict[tuple[float, Callable], list] = {}
        # Set by every event heard and by wake-ups: an instant that changed only the
        # workers' progress needs no decision.
        self.dirty = True
        self._workers_changed = False

    def hear(self, event: Event) -> None:
        """An event reaches the reconciler, as coordd's router posts it."""
        self.view = evolve(self.view, event, self.engine.now)
        self.dirty = True

    # the reconciler's loop ------------------------------------------------------------
    def step(self) -> None:
        now = self.engine.now
        self._report_exits()
        if self._workers_changed:
            self._refresh()
        if not self.dirty:
            return
        self.dirty = False
        for _ in range(MAX_ROUNDS):
            self._report_exits()
            actions = decide(self.view, now)
            if not actions:
                break
            for action in actions:
                self._act(action)
        else:
            raise SimulationError(f"{self.name}: decide did not settle at t={now:.3f}")
        if self.view.state.terminal:
            return self.end()
        if self._workers_changed:
            self._refresh()
        self._forget()
        self._schedule_wake()

    def _forget(self) -> None:
        """Lost and handed-back nodes that are no longer members matter to no decision."""
        if self._done_with:
            self.view = evolve(self.view, NodesForgotten(tuple(self._done_with)),
                               self.engine.now)
            self._done_with &= set(self.view.nodes)

    def _schedule_wake(self) -> None:
        """Wake at the next instant a decision may change with no new event: every time
        `decide` compares with `now` is one of these anchors plus one of these delays."""
        v, p, now = self.view, self.view.policy, self.engine.now
        times = []
        if v.state == JobState.PROVISIONING:
            times.append(v.state_since + p.initial_full_wait_s)
        if v.state == JobState.RUNNING and not v.inprocess:  # a scale-up restart
            times.append(v.state_since + p.scale_up_min_runtime_s)
            joins = [n.joined_at for n in v.nodes.values() if n.state == _READY
                     and n.id not in v.slots]
            if joins:
                times.append(max(joins) + p.scale_up_settle_s)
        if v.below_min_since is not None:
            times.append(v.below_min_since + p.wait_for_min_s)
        if v.stopping_since is not None:
            times.append(v.stopping_since + p.stop_grace_s + STOP_SLACK_S)
        if v.inproc.finished_at is not None:
            times.append(v.inproc.finished_at + p.finish_grace_s)
        failed = [e.time for e in v.exits.values() if e.code != 0]
        if failed:
            times += [min(failed) + p.failure_settle_s, min(failed) + p.peer_failure_settle_s]
        due = [t for t in times if t > now]
        if self._wake is not None:
            self._wake.cancel()
        self._wake = self.engine.at(min(due) + EPSILON, self._woken) if due else None

    def _woken(self) -> None:
        self.dirty = True

    def _later(self, delay: float, fn: Callable[[Any], None], item: Any) -> None:
        """fn(item) after `delay`, with one timer for all the items due at that instant
        (a thousand workers starting or stopping together)."""
        key = (self.engine.now + delay, fn)
        if key not in self._batches:
            self._batches[key] = []
            self.engine.at(key[0], self._run_batch, key)
        self._batches[key].append(item)

    def _run_batch(self, key: tuple[float, Callable]) -> None:
        for item in self._batches.pop(key):
            key[1](item)

    # actions: the view through evolve, the world through the runner's effects -----------
    def _act(self, action: plan.Action) -> None:
        old = self.view
        self.view = new = evolve(old, action, self.engine.now)
        if isinstance(action, plan.StartGeneration):
            if old.state == JobState.RECONFIGURING:
                self.reformations += 1
            self.workers, self.broken = {}, False  # the old generation is fenced
        elif isinstance(action, plan.Reform):
            self.reformations += 1
            for node_id in set(self.workers) - set(new.members):
                del self.workers[node_id]
        joining = isinstance(action, plan.Reform)
        for effect in fx.effects_of(old, action, new):
            self._perform(effect, joining)

    def _perform(self, effect: fx.Effect, joining: bool) -> None:
        """As the runner's `_perform`, by the agents and the provider (by type, not `match`:
        a thousand-node generation performs thousands of these)."""
        kind = type(effect)
        if kind is fx.Launch:
            self._launch(effect.node_id, effect.worker_generation, joining)
        elif kind is fx.StopWorkers:
            self._stop_worker(effect.node_id, graceful=effect.grace_s != 0)
        elif kind is fx.ReleaseNode:
            self._release(effect.node_id)
        elif kind is fx.AcquireNodes:
            self._acquire(effect.count)
        # TellReformed: the survivors' stall is modelled when the replica vanished;
        # StopQuorum: nothing simulated runs it.

    def _launch(self, node_id: str, generation: int, joining: bool) -> None:
        """An agent starts the node's workers (a dead machine's agent starts nothing). A
        generation's workers cold start and restore; a replica joining the running quorum
        starts warm where the job keeps spares (agents keep a warm interpreter for them)."""
        if node_id not in self.cloud.nodes:
            return
        m = self.model
        if joining:
            delay = m.join_warm_s if self.view.policy.spares > 0 else m.join_cold_s
        else:
            delay = m.worker_cold_start_s + m.restore_s
        self.workers[node_id] = worker = Worker(node_id, generation, self.view.ranks_of(node_id))
        self._later(delay, self._worker_up, worker)
        self._workers_changed = True

    def _worker_up(self, worker: Worker) -> None:
        if worker.exited or self.workers.get(worker.node_id) is not worker:
            return
        worker.running = True
        self._workers_changed = True
        if self.view.policy.mode != "restart":  # the trainer says so after its first step
            for rank in worker.ranks:
                self.hear(WorkerInProcess(worker.generation, worker.node_id, rank))

    def _stop_worker(self, node_id: str, graceful: bool) -> None:
        """A graceful stop ends the worker's training at the next step boundary; it commits
        that step and exits `save_s + stop_s` later. A kill ends it now, and the step in
        flight is lost."""
        worker = self.workers.get(node_id)
        if worker is None or worker.exited or node_id not in self.cloud.nodes:
            return
        if graceful and worker.running:
            self._later(self.model.step_time_s, self._at_step_boundary, worker)
        else:
            self._exit(worker, 0 if graceful else -9)

    def _at_step_boundary(self, worker: Worker) -> None:
        if worker.exited or self.workers.get(worker.node_id) is not worker:
            return
        worker.running = False
        self._workers_changed = True
        self._later(self.model.save_s + self.model.stop_s, self._exit_cleanly, worker)

    def _exit_cleanly(self, worker: Worker) -> None:
        self._exit(worker, 0)

    def _exit_all(self, workers: list[Worker], code: int) -> None:
        for worker in workers:
            self._exit(worker, code)

    def _exit(self, worker: Worker, code: int) -> None:
        if worker.exited or self.workers.get(worker.node_id) is not worker:
            return
        worker.exited, worker.running = True, False
        self._exited.append((worker, code))
        self._workers_changed = True

    def _report_exits(self) -> None:
        """The instant's exits, heard together: a group's thousand exits change the view
        once. In restart mode a clean exit commits the step it stopped at, a failure loses
        the step in flight."""
        if not self._exited:
            return
        exited, self._exited = self._exited, []
        codes, now = {code for _, code in exited}, self.engine.now
        if not self.view.inprocess:
            if 0 in codes:
                self.training.commit()
            if codes - {0}:
                self.training.lose_in_flight()
        self.hear(WorkerExits(tuple(
            WorkerExited(w.generation, WorkerExit(w.node_id, rank, code, now))
            for w, code in exited for rank in w.ranks)))

    def _acquire(self, count: int) -> None:
        """As the runner's acquisition: what the provider created is heard at once (the
        reconciler asks again for the rest); a provider that created none is asked again
        after its retry pause."""
        created = self.cloud.launch(count)
        nodes = tuple(NodeView(n.id, NodeState.JOINING) for n in created)
        delay = 0.0 if created else self.settings.provider_retry_s
        self.engine.after(delay, self.hear, NodesCreated(nodes, count))

    def _release(self, node_id: str) -> None:
        node = self.cloud.nodes.get(node_id)
        if node is not None:
            self.cloud.release(node)
        self.workers.pop(node_id, None)
        self._done_with.add(node_id)

    # the cloud's news --------------------------------------------------------------------
    def node_ready(self, node: SimNode) -> None:
        self.hear(NodeChanged(NodeView(node.id, NodeState.READY, joined_at=node.ready_at)))

    def node_noticed(self, node: SimNode) -> None:
        seen = self.view.nodes.get(node.id)
        if seen is not None and seen.state in (NodeState.READY, NodeState.ASSIGNED):
            self.hear(NodeChanged(dataclasses.replace(seen, state=NodeState.DRAINING)))

    def node_died(self, node: SimNode) -> None:
        seen = self.view.nodes.get(node.id)
        if seen is None or seen.state == NodeState.GONE:
            return
        if node.ready_at is None:  # never registered: the provider reports it gone
            self._lost(node.id, NodeState.JOINING)
            return
        worker = self.workers.pop(node.id, None)
        if not any(m in self.cloud.nodes for m in self.view.members):
            self.training.roll_back()  # no replica and no snapshot left: the durable checkpoint
        if worker is not None and not worker.exited:
            self._worker_vanished()
        self.engine.after(self.model.detect_s, self._stream_dropped, node.id)

    def _worker_vanished(self) -> None:
        """A replica vanished mid-training: in-process, the survivors re-form around it; in
        restart mode their collectives fail and they exit, saying a peer was lost."""
        self.training.lose_in_flight()
        if self.view.inprocess:
            self.training.stall(self.model.reform_s)
        else:
            self.broken = True
            self.engine.after(self.model.peer_fail_s, self._exit_all,
                              list(self.workers.values()), PEER_LOST_EXIT)
        self._workers_changed = True

    def _stream_dropped(self, node_id: str) -> None:
        seen = self.view.nodes.get(node_id)
        if seen is not None and seen.state not in (NodeState.GONE, NodeState.LOST):
            self.hear(NodeChanged(dataclasses.replace(seen, state=NodeState.SUSPECT)))
            self.engine.after(self.settings.reconnect_grace_s, self._lost, node_id,
                              NodeState.SUSPECT)

    def _lost(self, node_id: str, was: NodeState) -> None:
        seen = self.view.nodes.get(node_id)
        if seen is not None and seen.state == was:
            self.hear(NodeChanged(dataclasses.replace(seen, state=NodeState.LOST)))
            self._done_with.add(node_id)

    # training ----------------------------------------------------------------------------
    def _refresh(self) -> None:
        """How many replicas step now: in restart mode all of the generation or none."""
        self._workers_changed = False
        running = sum(1 for w in self.workers.values() if w.running)
        if not self.view.inprocess:
            everyone = running == len(self.view.members) and not self.broken
            running = running if everyone else 0
        self.training.set_active(running)

    def finished(self) -> None:
        """The last step is done: in-process a replica says so; every worker exits 0."""
        if self.view.inprocess:
            worker = next((w for w in self.workers.values() if w.running), None)
            if worker is not None:
                self.hear(WorkerFinished(worker.generation, worker.node_id, worker.ranks.start))
        self._exit_all(list(self.workers.values()), 0)
        self.dirty = True
