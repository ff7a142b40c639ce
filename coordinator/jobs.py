"""The job manager: accepts jobs, keeps one reconciler runner per live job, routes node and
worker events to it, and turns a generation into StartWorkers messages."""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path

import structlog

from coord.v1 import agent_pb2
from coordinator import bundle as bundles
from coordinator.bus import Bus
from coordinator.errors import Conflict, InvalidSpec
from coordinator.metrics import Metrics
from coordinator.nodes import NodeRegistry
from coordinator.reconciler.runner import Cancel, JobRunner, NodeChanged, WorkerExited
from coordinator.reconciler.view import JobView, NodeView, Policy, WorkerExit
from coordinator.settings import CoorddSettings
from coordinator.spec import JobSpec, parse_spec_json
from coordinator.states import JobState, NodeState
from coordinator.store import JobRecord, LogRecord, NodeRecord, Store

log = structlog.get_logger("coordinator.jobs")


class JobManager:
    def __init__(self, store: Store, bus: Bus, settings: CoorddSettings, metrics: Metrics):
        self.store, self.bus, self.settings, self.metrics = store, bus, settings, metrics
        self.nodes: NodeRegistry  # set by the server once providers exist
        self.runners: dict[str, JobRunner] = {}
        self._tasks: set[asyncio.Task] = set()

    @property
    def bundle_dir(self) -> Path:
        return self.settings.state_dir / "bundles"

    def checkpoint_dir(self, record: JobRecord, spec: JobSpec) -> str:
        return spec.checkpoint_dir or str(self.settings.state_dir / "checkpoints" / record.id)

    # client operations ---------------------------------------------------------------
    async def submit(self, spec_json: str, source: str, bundle: bytes,
                     dry_run: bool) -> JobRecord:
        spec = parse_spec_json(spec_json, source or "job spec")
        self.nodes.provider(spec)  # an unconfigured provider is a spec error, found now
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
        await self.store.append_event(record.id, "state", 0, f"submitted from {source or '?'}",
                                      {"new": "PENDING"})
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
                      max_restarts=spec.max_restarts, wait_for_min_s=spec.nodes.wait_for_min_s,
                      nproc_per_node=spec.nproc_per_node, stop_grace_s=s.stop_grace_s,
                      failure_settle_s=s.reconnect_grace_s + 0.5,
                      peer_failure_settle_s=s.heartbeat_timeout_s + 2.0,
                      scale_up_settle_s=s.scale_up_settle_s,
                      scale_up_min_runtime_s=s.scale_up_min_runtime_s,
                      initial_full_wait_s=s.initial_full_wait_s)

    def _start_runner(self, record: JobRecord, spec: JobSpec) -> None:
        view = JobView(job_id=record.id, state=record.state, generation=record.generation,
                       restarts=record.restarts, policy=self._policy(spec),
                       members=list(record.node_ids), state_since=time.time())
        for node in self.nodes.nodes.values():
            if node.job_id == record.id:
                view.nodes[node.id] = self.nodes.view(node)
        runner = JobRunner(record, spec, view, self)
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
            self._start_runner(record, parse_spec_json(record.spec_json, record.id))

    def spawn(self, coro) -> asyncio.Task:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

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
                 for l in batch.lines if l.job_id in self.runners]
        for record in await self.store.append_logs(lines, node.id, seq):
            self.bus.publish("logs", record.job_id, record)
        node.applied_seq = seq

    async def on_agent_event(self, node_id: str, msg: agent_pb2.AgentEvent) -> None:
        if runner := self.runners.get(msg.job_id):
            await runner.event(msg.kind, f"{node_id}: {msg.message}", node=node_id)

    # launching a generation ----------------------------------------------------------
    async def launch(self, record: JobRecord, spec: JobSpec, view: JobView) -> None:
        master = view.nodes[view.members[0]]
        port = self.nodes.free_port(master.id) or master.free_port  # fresh: reported just now
        world = len(view.members) * spec.nproc_per_node
        ckpt = self.checkpoint_dir(record, spec)
        for index, node_id in enumerate(view.members):
            node = self.nodes.nodes[node_id]
            await self.nodes.set_state(node, NodeState.ASSIGNED, f"generation {record.generation}")
            workers = []
            for local_rank in range(spec.nproc_per_node):
                env = {**spec.env,
                       "MASTER_ADDR": master.host, "MASTER_PORT": str(port),
                       "WORLD_SIZE": str(world), "RANK": str(index * spec.nproc_per_node + local_rank),
                       "LOCAL_RANK": str(local_rank), "LOCAL_WORLD_SIZE": str(spec.nproc_per_node),
                       "GROUP_RANK": str(index), "COORD_JOB_ID": record.id,
                       "COORD_JOB_NAME": record.name, "COORD_GENERATION": str(record.generation),
                       "COORD_NODE_ID": node_id, "COORD_CHECKPOINT_DIR": ckpt}
                workers.append(agent_pb2.WorkerSpec(rank=int(env["RANK"]), local_rank=local_rank,
                                                    env=env))
            self.nodes.send(node_id, agent_pb2.CoordinatorMessage(start=agent_pb2.StartWorkers(
                job_id=record.id, generation=record.generation, command=spec.run,
                setup=spec.setup or "", bundle_digest=record.bundle_digest, workers=workers)))
