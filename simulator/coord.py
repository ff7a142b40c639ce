"""coord's policies on the simulated cloud, decided by the reconciler's real `decide`.

Only the clock, the provider and the agents are simulated: the cloud's news becomes the view
changes coordd's runner would make (through simulator.seam), `decide` answers, and each
action is carried out here the way agents and workers would (workers start, stop at a step
boundary, are killed, exit because a peer vanished).
"""

from __future__ import annotations

import dataclasses

from coordinator.reconciler.policy import policy_for
from coordinator.reconciler import plan
from coordinator.reconciler.decide import STOP_SLACK_S, decide
from coordinator.reconciler.view import PEER_LOST_EXIT, JobView, NodeView, WorkerExit
from coordinator.settings import CoorddSettings
from contract.spec import JobSpec
from contract.states import JobState, NodeState
from simulator import seam
from simulator.cloud import SimNode
from simulator.engine import Timer
from simulator.errors import SimulationError
from simulator.model import WorkloadModel
from simulator.policy import PolicyRun
from simulator.traces import Trace

MAX_ROUNDS = 64  # decide answers [] again within a few rounds; more is a bug
EPSILON = 1e-6


@dataclasses.dataclass(eq=False)
class Worker:
    node_id: str
    ready_at: float
    running: bool = False   # past its start-up, stepping
    exited: bool = False


class CoordRun(PolicyRun):
    def __init__(self, name: str, spec: JobSpec, mode: str, model: WorkloadModel,
                 trace: Trace, seed: int, settings: CoorddSettings | None = None) -> None:
        super().__init__(model, trace, spec.nodes.count, seed)
        self.name, self.settings = name, settings or CoorddSettings()
        policy = policy_for(spec, self.settings, mode)
        self.view = JobView(job_id="sim", state=JobState.PENDING, generation=0, restarts=0,
                            policy=policy)
        self.sim: dict[str, SimNode] = {}
        self.workers: dict[str, Worker] = {}
        self.broken = False     # restart mode: the running generation lost a member
        self._wake: Timer | None = None
        # Set by anything that changes what `decide` sees (through the seam) and by wake-ups:
        # an instant that changed only the workers' progress needs no decision.
        self.dirty = True
        self._workers_changed = False

    # the reconciler's loop ------------------------------------------------------------
    def step(self) -> None:
        now = self.engine.now
        if self._workers_changed:
            self._refresh()
        if not self.dirty:
            return
        self.dirty = False
        for _ in range(MAX_ROUNDS):
            actions = decide(self.view, now)
            if not actions:
                break
            for action in actions:
                seam.apply_action(self.view, action, now)
                self._act(action)
        else:
            raise SimulationError(f"{self.name}: decide did not settle at t={now:.3f}")
        if self.view.state.terminal:
            return self.end()
        if self._workers_changed:
            self._refresh()
        self._forget_gone()
        self._schedule_wake()

    def _forget_gone(self) -> None:
        """Nodes handed back or lost that are no longer members matter to no decision:
        dropped, so each decision stays proportional to the job's size."""
        members = set(self.view.members)
        for node_id in [n.id for n in self.view.nodes.values()
                        if n.state in (NodeState.GONE, NodeState.LOST) and n.id not in members]:
            del self.view.nodes[node_id]

    def _schedule_wake(self) -> None:
        """Wake at the next instant a decision may change with no new event: every time
        `decide` compares with `now` is one of these anchors plus one of these delays."""
        v, p, now = self.view, self.view.policy, self.engine.now
        times = []
        if v.state == JobState.PROVISIONING:
            times.append(v.state_since + p.initial_full_wait_s)
        if v.state == JobState.RUNNING and not v.inprocess:  # a scale-up restart
            times.append(v.state_since + p.scale_up_min_runtime_s)
            joins = [n.joined_at for n in v.nodes.values() if n.state == NodeState.READY
                     and n.id not in v.slots]
            if joins:
                times.append(max(joins) + p.scale_up_settle_s)
        if v.below_min_since is not None:
            times.append(v.below_min_since + p.wait_for_min_s)
        if v.stopping_since is not None:
            times.append(v.stopping_since + p.stop_grace_s + STOP_SLACK_S)
        if v.finished_at is not None:
            times.append(v.finished_at + p.finish_grace_s)
        failed = [e.time for e in v.exits.values() if e.code != 0]
        if failed:
            times += [min(failed) + p.failure_settle_s, min(failed) + p.peer_failure_settle_s]
        due = [t for t in times if t > now]
        if self._wake is not None:
            self._wake.cancel()
        self._wake = self.engine.at(min(due) + EPSILON, self._woken) if due else None

    def _woken(self) -> None:
        self.dirty = True

    def _tell(self, change, *args) -> None:  # noqa: ANN001 (a seam function and its args)
        """News for the view, through the seam: the next decision step must run."""
        change(self.view, *args)
        self.dirty = True

    # actions: what agents, workers and the provider do ----------------------------------
    def _act(self, action: plan.Action) -> None:
        match action:
            case plan.StartGeneration(node_ids, cause):
                self._start_generation(node_ids, cause)
            case plan.StopGeneration(_, grace_s):
                self._stop_generation(grace_s)
            case plan.Reform(_, added, _, _):
                self._reform(added)
            case plan.StopNodes(node_ids, _):
                for node_id in node_ids:
                    self._stop_worker(node_id, graceful=True)
            case plan.Acquire(count, _):
                self._acquire(count)
            case plan.Release(node_ids, _):
                for node_id in node_ids:
                    self._release(node_id)

    def _start_generation(self, node_ids: tuple[str, ...], cause: str) -> None:
        if cause != "start":
            self.reformations += 1
        self.broken = False
        delay = self.model.worker_cold_start_s + self.model.restore_s
        self.workers = {n: Worker(n, self.engine.now + delay) for n in node_ids}
        self.engine.after(delay, self._workers_up, self.view.generation)
        self._workers_changed = True

    def _workers_up(self, generation: int) -> None:
        for worker in self.workers.values():
            if not worker.exited and worker.ready_at <= self.engine.now:
                worker.running = True
        self._workers_changed = True

    def _reform(self, added: tuple[str, ...]) -> None:
        self.reformations += 1
        members = set(self.view.members)
        for node_id in list(self.workers):
            if node_id not in members:
                del self.workers[node_id]
        warm = self.view.policy.spares > 0  # agents keep a warm interpreter for such jobs
        delay = self.model.join_warm_s if warm else self.model.join_cold_s
        for node_id in added:
            self.workers[node_id] = Worker(node_id, self.engine.now + delay)
        self.engine.after(delay, self._workers_up, self.view.generation)
        self._workers_changed = True

    def _stop_generation(self, grace_s: float | None) -> None:
        for node_id in list(self.workers):
            self._stop_worker(node_id, graceful=grace_s != 0)

    def _stop_worker(self, node_id: str, graceful: bool) -> None:
        """A graceful stop ends the worker at the next step boundary (it commits that step);
        a kill ends it now, and the step in flight is lost."""
        worker = self.workers.get(node_id)
        if worker is None or worker.exited or node_id not in self.cloud.nodes:
            return
        if graceful and worker.running:
            self.engine.after(self.model.step_time_s, self._exit, worker, 0)
        else:
            self._exit(worker, 0 if graceful else -9)

    def _exit_all(self, workers: list[Worker], code: int) -> None:
        for worker in workers:
            self._exit(worker, code)

    def _exit(self, worker: Worker, code: int) -> None:
        if worker.exited or self.workers.get(worker.node_id) is not worker:
            return
        worker.exited, worker.running = True, False
        if not self.view.inprocess:
            self.training.lose_in_flight() if code else self.training.commit()
        if worker.node_id in self.view.members:
            for rank in self.view.ranks_of(worker.node_id):
                seam.on_worker_exited(self.view, WorkerExit(worker.node_id, rank, code,
                                                            self.engine.now))
            self.dirty = True
        self._workers_changed = True

    def _acquire(self, count: int) -> None:
        created = self.cloud.launch(count)
        for node in created:
            self.sim[node.id] = node
        self._tell(seam.on_nodes_created, [NodeView(n.id, NodeState.JOINING) for n in created],
                              len(created))
        if len(created) < count:  # the provider failed for the rest: coordd retries later
            self.engine.after(self.settings.provider_retry_s, self._tell, seam.on_nodes_created,
                              [], count - len(created))

    def _release(self, node_id: str) -> None:
        node = self.sim.pop(node_id, None)
        if node is not None:
            self.cloud.release(node)
        self.workers.pop(node_id, None)

    # the cloud's news --------------------------------------------------------------------
    def node_ready(self, node: SimNode) -> None:
        self._tell(seam.on_node_changed, NodeView(node.id, NodeState.READY, joined_at=node.ready_at))

    def node_noticed(self, node: SimNode) -> None:
        seen = self.view.nodes.get(node.id)
        if seen is not None and seen.state in (NodeState.READY, NodeState.ASSIGNED):
            self._tell(seam.on_node_changed, dataclasses.replace(seen, state=NodeState.DRAINING))

    def node_died(self, node: SimNode) -> None:
        self.sim.pop(node.id, None)
        seen = self.view.nodes.get(node.id)
        if seen is None or seen.state == NodeState.GONE:
            return
        if node.ready_at is None:  # never registered: the provider reports it gone
            self._tell(seam.on_node_changed, dataclasses.replace(seen, state=NodeState.LOST))
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
        if self.view.inprocess:
            self.training.lose_in_flight()
            self.training.stall(self.model.reform_s)
        else:
            self.broken = True
            self.training.lose_in_flight()
            self.engine.after(self.model.peer_fail_s, self._exit_all,
                              list(self.workers.values()), PEER_LOST_EXIT)
        self._workers_changed = True

    def _stream_dropped(self, node_id: str) -> None:
        seen = self.view.nodes.get(node_id)
        if seen is not None and seen.state != NodeState.GONE:
            self._tell(seam.on_node_changed, dataclasses.replace(seen, state=NodeState.SUSPECT))
            self.engine.after(self.settings.reconnect_grace_s, self._lost, node_id)

    def _lost(self, node_id: str) -> None:
        seen = self.view.nodes.get(node_id)
        if seen is not None and seen.state == NodeState.SUSPECT:
            self._tell(seam.on_node_changed, dataclasses.replace(seen, state=NodeState.LOST))

    # training ----------------------------------------------------------------------------
    def _refresh(self) -> None:
        """How many replicas step now: in restart mode all of the generation or none."""
        self._workers_changed = False
        running = sum(1 for w in self.workers.values() if w.running)
        if not self.view.inprocess:
            everyone = running == len(self.workers) and not self.broken
            running = running if everyone else 0
        self.training.set_active(running)

    def finished(self) -> None:
        """The last step is done: in-process a replica says so; every worker exits 0."""
        if self.view.inprocess:
            seam.on_worker_finished(self.view, self.engine.now)
        self._exit_all(list(self.workers.values()), 0)
        self.dirty = True


