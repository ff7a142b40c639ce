"""The job manager: accepts jobs, keeps one reconciler runner per live job, routes node and
worker events to it, and turns a generation into StartWorkers messages."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Iterable
from pathlib import Path

import structlog

from agent.control import (WORKER_CHECKPOINT, WORKER_FINISHED, WORKER_INPROCESS,
                           WORKER_RESTORED)
from coord.v1 import agent_pb2
from coordinator import bundle as bundles
from coordinator.bus import Bus
from coordinator.errors import Conflict, InvalidSpec
from coordinator.logbudget import LogBudget
from coordinator.metrics import Metrics
from coordinator.nodes import NodeRegistry
from coordinator.quorum import (QuorumService, QuorumUnavailable, lighthouse_available,
                                 public_host)
from coordinator.reconciler.runner import (Cancel, JobRunner, NodeChanged, WorkerExited,
                                          WorkerFinished, WorkerInProcess)
from coordinator.reconciler.resume import CheckpointCommitted, WorkerRestored
from coordinator.reconciler.view import JobView, NodeView, Policy, WorkerExit
from coordinator.settings import CoorddSettings
from coordinator.spec import JobSpec, check_recorded_flags, parse_spec_json
from coordinator.states import JobState, NodeState
from coordinator.store import JobRecord, LogRecord, NodeRecord, Store
from coordinator.workerenv import rank_env
from coordinator.store import EventRecord, JobRecord, LogRecord, NodeRecord, Store

log = structlog.get_logger("coordinator.jobs")
# What a worker's control lines tell the job's reconciler (see agent/control.py).
_WORKER_REPORTS = {WORKER_INPROCESS: WorkerInProcess, WORKER_FINISHED: WorkerFinished}
_STEP_REPORTS = {WORKER_CHECKPOINT: CheckpointCommitted, WORKER_RESTORED: WorkerRestored}
# Recorded when a job in mode "auto" cannot run a generation in-process (`coord status` shows it).
AUTO_RESTART = "mode.restart"
INSTALL_HINT = "pip install 'coord[elastic]'"
# Recorded at submit when the job's nodes fit the machine but not the memory available now.
FIT_WARNING = "resources.tight"


class JobManager:
    def __init__(self, store: Store, bus: Bus, settings: CoorddSettings, metrics: Metrics):
        self.store, self.bus, self.settings, self.metrics = store, bus, settings, metrics
        self.nodes: NodeRegistry  # set by the server once providers exist
        self.runners: dict[str, JobRunner] = {}
        self.log_budget = LogBudget(store, settings.max_log_line_bytes,
                                    settings.max_log_bytes_per_job)
        self.quorums: dict[str, QuorumService] = {}  # in-process jobs' Lighthouses
        self._tasks: set[asyncio.Task] = set()
        self.coordd_id = ""  # set by the server: the id agents mark this coordd's folders with

    @property
    def bundle_dir(self) -> Path:
        return self.settings.state_dir / "bundles"

    def checkpoint_dir(self, record: JobRecord, spec: JobSpec) -> str:
        return spec.checkpoint_dir or str(self.settings.state_dir / "checkpoints" / record.id)

    # client operations ---------------------------------------------------------------
    async def submit(self, spec_json: str, source: str, bundle: bytes,
                     dry_run: bool, overrides: list[str] | None = None) -> JobRecord:
        spec = parse_spec_json(spec_json, source or "job spec")
        overrides = check_recorded_flags(overrides or [])
        # an unconfigured provider, or one that cannot hold the job, is a spec error, found now
        fit_warning = self.nodes.provider(spec).check_fits(spec, source or "job spec")
        await self.nodes.provider(spec).vet(spec, source or "job spec")
        if spec.fault_tolerance.mode == "inprocess" and not lighthouse_available():
            raise InvalidSpec(f"{source}: fault_tolerance.mode = 'inprocess' needs torchft where "
                              f"coordd runs ({INSTALL_HINT})")
        if len(bundle) > bundles.MAX_BUNDLE_BYTES:
            raise InvalidSpec(f"{source}: bundle exceeds {bundles.MAX_BUNDLE_BYTES // 2**20} MiB")
        record = JobRecord(id=f"{spec.name[:40]}-{uuid.uuid4().hex[:8]}", name=spec.name,
                           spec_json=spec.to_json())
        if dry_run:
            return record
        if bundle:
            record.bundle_digest = bundles.digest(bundle)
            await asyncio.to_thread(self._save_bundle, record.bundle_digest, bundle)
        await self.store.insert_job(record)
        self.metrics.job_added(record.state)
        await self.store.append_event(
            record.id, "state", 0, f"submitted from {source or '?'}" +
            (f" with {' '.join(overrides)}" if overrides else ""),
            {"new": "PENDING", "overrides": overrides})
        if fit_warning:
            await self.store.append_event(record.id, FIT_WARNING, 0, fit_warning, {})
            log.warning(FIT_WARNING, job=record.id, message=fit_warning)
        self._start_runner(record, spec)
        return record

    def _save_bundle(self, digest: str, data: bytes) -> None:
        self.bundle_dir.mkdir(parents=True, exist_ok=True)
        path = self.bundle_dir / f"{digest}.tar.gz"
        if not path.exists():
            tmp = path.with_suffix(".tmp")
            tmp.write_bytes(data)
            tmp.replace(path)

    def bundle_path(self, digest: str) -> Path:
        if not digest.isalnum():
            raise InvalidSpec("bad bundle digest")
        return self.bundle_dir / f"{digest}.tar.gz"

    async def cancel(self, ref: str, reason: str) -> JobRecord:
        record = await self.store.get_job(ref)
        if record.state.terminal:
            raise Conflict(f"job {record.id} already ended: {record.state}")
        runner = self.runners.get(record.id)
        if runner is None:
            raise Conflict(f"job {record.id} has no running reconciler")
        runner.post(Cancel(reason or "cancelled by user"))
        return record

    # runners -------------------------------------------------------------------------
    def _policy(self, spec: JobSpec) -> Policy:
        s = self.settings
        return Policy(target=spec.nodes.count, minimum=spec.nodes.minimum,
                      spares=spec.nodes.spares, max_restarts=spec.max_restarts, wait_for_min_s=spec.nodes.wait_for_min_s,
                      nproc_per_node=spec.nproc_per_node, stop_grace_s=s.stop_grace_s,
                      failure_settle_s=s.reconnect_grace_s + 0.5,
                      peer_failure_settle_s=s.heartbeat_timeout_s + 2.0,
                      scale_up_settle_s=s.scale_up_settle_s,
                      scale_up_min_runtime_s=s.scale_up_min_runtime_s,
                      initial_full_wait_s=s.initial_full_wait_s, mode=fault_mode(spec))

    def _start_runner(self, record: JobRecord, spec: JobSpec,
                      history: list[EventRecord] | None = None) -> None:
        view = JobView(job_id=record.id, state=record.state, generation=record.generation,
                       restarts=record.restarts, policy=self._policy(spec),
                       members=list(record.node_ids), state_since=time.time())
        for node in self.nodes.nodes.values():
            if node.job_id == record.id:
                view.nodes[node.id] = self.nodes.view(node)
        runner = JobRunner(record, spec, view, self)
        # What the job's checkpoints allow is known before its task exists: a stop before
        # the runner's first turn must not take a resumable job for one without a checkpoint.
        runner.resume.replay(history or [])
        self.runners[record.id] = runner
        task = self.spawn(runner.run())
        task.add_done_callback(lambda t: self._runner_done(record.id, t))

    def _runner_done(self, job_id: str, task: asyncio.Task) -> None:
        self.runners.pop(job_id, None)
        if not task.cancelled() and task.exception():
            log.error("reconciler.crashed", job=job_id, exc_info=task.exception())

    async def resume(self) -> None:
        """At start-up: a reconciler for every job that had not ended."""
        for record in await self.store.list_jobs(include_finished=False, limit=1000):
            self.metrics.job_added(record.state)
            spec = parse_spec_json(record.spec_json, record.id)
            self._start_runner(record, spec, await self.store.events_after(record.id))
            if record.generation and fault_mode(spec) != "restart":
                try:  # supervised again, on its old port
                    await self.quorum_address(record, spec)
                except QuorumUnavailable as exc:
                    log.error("quorum.unavailable", job=record.id, error=str(exc))

    async def ended(self, job_ids: Iterable[str]) -> list[str]:
        """Those of `job_ids` that ended, or that this coordd does not know (what an agent
        holds of them goes only where its owner mark names this coordd: see agent/scratch.py)."""
        asked = [job_id for job_id in dict.fromkeys(job_ids) if job_id not in self.runners]
        states = await self.store.job_states(asked)
        return [job_id for job_id in asked
                if job_id not in states or states[job_id].terminal]

    async def known_ended(self, job_ids: Iterable[str]) -> set[str]:
        """Those of `job_ids` this coordd knows, and that ended."""
        states = await self.store.job_states(list(dict.fromkeys(job_ids)))
        return {job_id for job_id, state in states.items()
                if state.terminal and job_id not in self.runners}

    def spawn(self, coro) -> asyncio.Task:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def close(self) -> None:
        """coordd stops cleanly: end the reconcilers, then tell each job what the stop does
        to it (before the providers stop their nodes)."""
        runners = list(self.runners.values())
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for runner in runners:
            try:
                await runner.on_coordd_stop()
            except Exception:  # one job's trouble must not keep the others from being told
                log.exception("job.stop_failed", job=runner.record.id)

    async def stop_quorums(self) -> None:
        """After the local nodes stopped: in-process replicas that leave need their quorum
        service to commit the step in flight. The jobs go on: their leases are kept."""
        for service in self.quorums.values():
            await service.stop(job_ended=False)
        self.quorums.clear()

    # routing from the node registry and the agent service -----------------------------
    def on_node_change(self, node: NodeRecord, view: NodeView) -> None:
        if node.job_id and (runner := self.runners.get(node.job_id)):
            runner.post(NodeChanged(view))

    def on_worker_exit(self, node_id: str, msg: agent_pb2.WorkerStateChange) -> None:
        if runner := self.runners.get(msg.job_id):
            code = msg.exit_code if msg.phase == agent_pb2.WORKER_PHASE_EXITED else 127
            runner.post(WorkerExited(msg.generation, WorkerExit(node_id, msg.rank, code,
                                                                time.time())))

    async def on_logs(self, node: NodeRecord, batch: agent_pb2.LogBatch, seq: int) -> None:
        lines = [LogRecord(job_id=l.job_id, generation=l.generation, node_id=node.id,
                           rank=l.rank, stream=l.stream, seq=l.seq,
                           time=l.time.ToSeconds() + l.time.nanos / 1e9 if l.HasField("time")
                           else time.time(), text=l.text)
                 for l in batch.lines if l.job_id == node.job_id and l.job_id in self.runners]
        for record in await self.store.append_logs(await self.log_budget.admit(lines), node.id,
                                                   seq):
            self.bus.publish("logs", record.job_id, record)
        node.applied_seq = seq

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
        await runner.event(msg.kind, f"{node_id}: {msg.message}", node=node_id)

    # the quorum service of in-process jobs ---------------------------------------------
    async def quorum_address(self, record: JobRecord, spec: JobSpec) -> str:
        """The job's Lighthouse, started with its first generation and kept to its end."""
        if service := self.quorums.get(record.id):
            return service.address
        runner = self.runners.get(record.id)
        service = QuorumService(record.id, public_host(self.settings),
                                spec.nodes.minimum * spec.nproc_per_node,
                                runner.event if runner else _ignore_event,
                                self.settings.state_dir / "quorum" / record.id)
        self.quorums[record.id] = service
        address = await service.start()
        if runner:
            await runner.event("quorum.started", f"quorum service (Lighthouse) at {address}",
                               address=address)
        return address

    async def stop_quorum(self, job_id: str) -> None:
        if service := self.quorums.pop(job_id, None):
            await service.stop()

    # launching workers ---------------------------------------------------------------
    def _has_torchft(self, node_id: str) -> bool:
        return "torchft" in self.nodes.nodes[node_id].resources.get("software", ())

    def _auto_restart_reason(self, spec: JobSpec, node_ids: tuple[str, ...]) -> str:
        """Why a job in mode "auto" runs a new generation in restart mode ('' if it need not)."""
        if spec.fault_tolerance.mode != "auto":
            return ""
        if not lighthouse_available():
            return f"torchft is not installed where coordd runs ({INSTALL_HINT} there)"
        if missing := [n for n in node_ids if not self._has_torchft(n)]:
            return (f"torchft is not installed on node(s) {', '.join(missing)} "
                    f"({INSTALL_HINT} on every node)")
        return ""

    async def _say_auto_restart(self, record: JobRecord, reason: str) -> None:
        if runner := self.runners.get(record.id):
            await runner.event(AUTO_RESTART, "fault_tolerance.mode = 'auto' runs generation "
                               f"{record.generation} in restart mode: {reason}; a node loss "
                               "restarts every worker", reason=reason)

    async def launch(self, record: JobRecord, spec: JobSpec, view: JobView, generation: int,
                     node_ids: tuple[str, ...]) -> None:
        """Start workers of `generation` on `node_ids` (a whole generation, or in in-process
        mode the nodes that join the running replicas)."""
        mode, joining = fault_mode(spec), set(node_ids) != set(view.members)
        # Without torchft a worker could not join a quorum: no choice to offer, and say so.
        if not joining and (why := self._auto_restart_reason(spec, node_ids)):
            mode = "restart"
            await self._say_auto_restart(record, why)
        lighthouse = await self.quorum_address(record, spec) if mode != "restart" else ""
        master = view.nodes[view.members[0]]
        port = self.nodes.free_port(master.id) or master.free_port  # fresh: reported just now
        base = {**spec.env, "COORD_JOB_ID": record.id, "COORD_JOB_NAME": record.name,
                "COORD_GENERATION": str(generation),
                "COORD_CHECKPOINT_DIR": self.checkpoint_dir(record, spec)}
        # Joiners of running replicas, and every worker in mode "inprocess", are replicas
        # only; in auto mode a new generation's workers get both environments and choose.
        replica_only = mode == "inprocess" or joining
        for node_id in node_ids:
            node = self.nodes.nodes[node_id]
            await self.nodes.set_state(node, NodeState.ASSIGNED, f"generation {record.generation}")
            workers = []
            for rank in view.ranks_of(node_id):
                env = {**base, "COORD_NODE_ID": node_id, "COORD_NODE_HOST": node.host,
                       **rank_env(rank=rank, world_size=view.world_size,
                                  nproc_per_node=spec.nproc_per_node, master=(master.host, port),
                                  restarts=record.restarts, max_restarts=spec.max_restarts,
                                  job_id=record.id)}
                if lighthouse:
                    env |= replica_env(node.host, rank, lighthouse, spec, joining, replica_only)
                workers.append(agent_pb2.WorkerSpec(rank=rank, local_rank=int(env["LOCAL_RANK"]),
                                                    env=env))
            self.nodes.send(node_id, agent_pb2.CoordinatorMessage(start=agent_pb2.StartWorkers(
                job_id=record.id, generation=generation, command=spec.run,
                setup=spec.setup or "", bundle_digest=record.bundle_digest, workers=workers,
                keep_warm=bool(lighthouse) and record.restarts < spec.max_restarts)))


def replica_env(host: str, rank: int, lighthouse: str, spec: JobSpec, joining: bool,
                replica_only: bool) -> dict[str, str]:
    """What a torchft replica needs. An in-process worker is one replica (a group of one
    process): for a replica-only worker RANK/WORLD_SIZE describe that group and
    REPLICA_GROUP_ID is its unique id in the job; in auto mode the group-wide variables stay
    for a script that takes the restart path."""
    env = {"REPLICA_GROUP_ID": str(rank), "TORCHFT_LIGHTHOUSE": lighthouse,
           # Retry quorum forever: the Lighthouse may be restarted under a running job.
           "TORCHFT_QUORUM_RETRIES": "1000000",
           "COORD_FT_MODE": "inprocess" if replica_only else "auto",
           "COORD_FT_JOIN": "1" if joining else "0",
           "COORD_FT_MIN_REPLICAS": str(spec.nodes.minimum * spec.nproc_per_node),
           "RUST_LOG": spec.env.get("RUST_LOG", "warn")}  # torchft logs every quorum at info
    if replica_only:
        env |= {"RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": host, "MASTER_PORT": "0",
                "ROLE_RANK": "0", "ROLE_WORLD_SIZE": "1"}
    return env


def fault_mode(spec: JobSpec) -> str:
    """The job's [fault_tolerance] mode; auto is restart where coordd has no torchft."""
    mode = spec.fault_tolerance.mode
    return "restart" if mode == "auto" and not lighthouse_available() else mode


async def _ignore_event(kind: str, message: str, **data) -> None:
    return None


def _json_object(text: str) -> dict:
    """An agent event's data; {} for anything but a JSON object (an agent of another
    version, or a bad one, must not end its node's stream)."""
    try:
        data = json.loads(text or "{}")
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}
