"""Worker processes on this node: prepare the job's directory, start each rank in a process
group of its own, ship its output line by line, report its exit, stop it on request."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import signal
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path

import structlog
from google.protobuf.timestamp_pb2 import Timestamp

from agent.lifeline import PING_S, Lifeline
from agent.outbox import Outbox
from agent.warm import WarmPool
from contract import control as control_lines
from contract.fence import write_fence
from contract.scratch import Scratch, snapshot_root
from contract.workerenv import node_env
from coord.v1 import agent_pb2, types_pb2

log = structlog.get_logger("agent.supervisor")
MAX_LINE = 16 * 1024  # longer lines are cut, and say so
MAX_REMEMBERED_EXITS = 256  # re-reported at every reconnect


@dataclasses.dataclass
class Worker:
    job_id: str
    generation: int
    rank: int
    process: asyncio.subprocess.Process
    lifeline: Lifeline  # closed when the worker exits (see agent/lifeline.py)
    keep_warm: bool = False  # see StartWorkers.keep_warm
    done: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)


@dataclasses.dataclass(eq=False)
class Preparing:
    """A start still under way (job directory, then each rank): a stop meanwhile cancels
    the ranks not yet started and stops those that were."""
    job_id: str
    generation: int
    ranks: frozenset[int] = frozenset()
    stop_grace_s: float | None = None  # set by a stop that arrived meanwhile


class Supervisor:
    def __init__(self, workdir: Path, outbox: Outbox,
                 fetch_bundle: Callable[[str, str], Awaitable[bytes]], cpus: int | None = None):
        self.workdir, self.outbox, self.fetch_bundle = workdir, outbox, fetch_bundle
        self.cpus = cpus  # the cores this node's workers share; None: the host's, not split
        self.workers: dict[tuple[str, int, int], Worker] = {}
        self._prepared: dict[str, str] = {}  # job id -> bundle digest already unpacked
        self._tasks: set[asyncio.Task] = set()
        self.scratch = Scratch(snapshot_root(workdir), workdir)
        self._scratch_of: set[tuple[str, str]] = set()  # (job id, node id) this agent used
        self.coordd_id = ""  # the coordd this agent registered with (Registered.coordd_id)
        self._exits: dict[tuple[str, int, int], agent_pb2.WorkerStateChange] = {}
        self._preparing: set[Preparing] = set()  # starts still fetching or setting up
        self.warm = (WarmPool(MAX_LINE, node_env({}, workers=1, cpus=cpus))
                     if WarmPool.enabled() else None)
        self._pinging: asyncio.Task | None = None

    def prewarm(self) -> None:
        """Start a warm worker interpreter while this node is idle (if enabled)."""
        if self.warm is not None and not self.running():
            self.warm.fill()

    def _warm_beside(self, job_id: str, generation: int, rank: int) -> None:
        """An in-process replica committed its first step, so its start (quorum, heal) no
        longer competes for the CPU: if coordd would restart it in place should it fail, keep
        a warm interpreter beside it for that restart."""
        worker = self.workers.get((job_id, generation, rank))
        if self.warm is not None and worker is not None and worker.keep_warm:
            self.warm.fill()

    def recent_exits(self) -> list[agent_pb2.WorkerStateChange]:
        return list(self._exits.values())

    def running(self) -> list[agent_pb2.RunningWorker]:
        return [agent_pb2.RunningWorker(job_id=w.job_id, generation=w.generation, rank=w.rank,
                                        pid=w.process.pid)
                for w in self.workers.values() if not w.done.is_set()]

    def spawn(self, coro) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # start ---------------------------------------------------------------------------
    def _known(self, job_id: str, generation: int) -> set[int]:
        """Ranks of that job's generation this agent runs, ran or is starting (not those
        that never started: a later start of them is not held against that)."""
        ran = [k for k, c in self._exits.items() if c.phase == agent_pb2.WORKER_PHASE_EXITED]
        return ({r for j, g, r in [*self.workers, *ran] if (j, g) == (job_id, generation)}
                | {r for p in self._preparing if (p.job_id, p.generation) == (job_id, generation)
                   for r in p.ranks})

    async def start(self, msg: agent_pb2.StartWorkers) -> None:
        # A start coordd sends again (a restarted coordd re-drives what it had not marked
        # done): the ranks already started here are adopted, never started twice.
        known = self._known(msg.job_id, msg.generation)
        if known & {w.rank for w in msg.workers}:
            log.info("job.start_adopted", job=msg.job_id, generation=msg.generation,
                     ranks=sorted(known))
            fresh = [w for w in msg.workers if w.rank not in known]
            if not fresh:
                return
            del msg.workers[:]
            msg.workers.extend(fresh)
        preparing = Preparing(msg.job_id, msg.generation, frozenset(w.rank for w in msg.workers))
        self._preparing.add(preparing)
        try:
            await self._start(msg, preparing)
        finally:
            self._preparing.discard(preparing)

    async def _start(self, msg: agent_pb2.StartWorkers, preparing: Preparing) -> None:
        try:
            job_dir = await self._prepare(msg)
        except Exception as exc:  # setup or bundle failure: every rank failed to start
            log.warning("job.prepare_failed", job=msg.job_id, error=str(exc))
            self._report_not_started(msg, msg.workers, str(exc))
            return
        for i, spec in enumerate(msg.workers):
            if preparing.stop_grace_s is not None:
                # Stopped while its bundle was fetched (across a coordd restart, say):
                # starting it now would run two generations of the job on this node.
                log.info("job.start_skipped", job=msg.job_id, generation=msg.generation,
                         reason="the generation was stopped before its workers started")
                self._report_not_started(msg, msg.workers[i:], "stopped before it started")
                break
            await self._start_one(msg, spec, job_dir)
        if preparing.stop_grace_s is not None:  # the stop may have missed ranks mid-start
            await self.stop(msg.job_id, msg.generation, preparing.stop_grace_s)

    def _report_not_started(self, msg: agent_pb2.StartWorkers,
                            specs: Iterable[agent_pb2.WorkerSpec], detail: str) -> None:
        for spec in specs:
            self._report(msg.job_id, msg.generation, spec.rank,
                         agent_pb2.WORKER_PHASE_FAILED_TO_START, detail=detail)

    async def _prepare(self, msg: agent_pb2.StartWorkers) -> Path:
        from contract import bundle
        job_dir = self.workdir / "jobs" / msg.job_id
        if self._prepared.get(msg.job_id) != msg.bundle_digest:
            if msg.bundle_digest:
                data = await self.fetch_bundle(msg.job_id, msg.bundle_digest)
                await asyncio.to_thread(bundle.unpack, data, job_dir)
            else:
                await asyncio.to_thread(job_dir.mkdir, parents=True, exist_ok=True)
            if msg.setup:
                await self._run_setup(msg, job_dir)
            self._prepared[msg.job_id] = msg.bundle_digest
        ckpt = msg.workers[0].env.get("COORD_CHECKPOINT_DIR", "") if msg.workers else ""
        if ckpt:
            await asyncio.to_thread(write_fence, job_dir / ckpt, msg.generation, msg.job_id)
        return job_dir

    async def _run_setup(self, msg: agent_pb2.StartWorkers, job_dir: Path) -> None:
        proc = await asyncio.create_subprocess_exec(
            "bash", "-c", msg.setup, cwd=job_dir, env=node_env({}),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, process_group=0)
        await self._pump(proc.stdout, msg.job_id, msg.generation, -1, types_pb2.LOG_STREAM_STDOUT)
        code = await proc.wait()
        if code != 0:
            raise RuntimeError(f"setup command exited with code {code}")

    async def _start_one(self, msg: agent_pb2.StartWorkers, spec: agent_pb2.WorkerSpec,
                         job_dir: Path) -> None:
        env = node_env({**self._scratch_env(spec), **spec.env},
                         workers=int(spec.env.get("LOCAL_WORLD_SIZE") or len(msg.workers)),
                         cpus=self.cpus)
        try:
            taken = self.warm and await self.warm.take(msg.command, job_dir, env)
            warm = taken is not None
            proc, lifeline = taken or await _spawn_cold(msg.command, job_dir, env)
        except OSError as exc:
            self._report(msg.job_id, msg.generation, spec.rank,
                         agent_pb2.WORKER_PHASE_FAILED_TO_START, detail=str(exc))
            return
        worker = Worker(msg.job_id, msg.generation, spec.rank, proc, lifeline, msg.keep_warm)
        self.workers[(msg.job_id, msg.generation, spec.rank)] = worker
        if self._pinging is None:
            self._pinging = asyncio.get_running_loop().create_task(self._ping())
        log.info("worker.started", job=msg.job_id, generation=msg.generation, rank=spec.rank,
                 pid=proc.pid, warm=warm)
        self._report(msg.job_id, msg.generation, spec.rank, agent_pb2.WORKER_PHASE_RUNNING,
                     pid=proc.pid)
        self.spawn(self._watch(worker))

    def _scratch_env(self, spec: agent_pb2.WorkerSpec) -> dict[str, str]:
        """Node-local memory for the trainer's per-step snapshots, which outlives the worker
        processes (the next generation on this node restores from it) but not the node, and
        the job's temp space (TMPDIR, unless the job sets its own)."""
        job_id, node_id = spec.env["COORD_JOB_ID"], spec.env["COORD_NODE_ID"]
        self._scratch_of.add((job_id, node_id))
        self.scratch.create(job_id, node_id, self.coordd_id)
        return {"TMPDIR": str(self.scratch.tmp_dir(job_id)),
                "COORD_SNAPSHOT_DIR": str(self.scratch.snapshot_dir(job_id, node_id))}

    async def forget(self, job_ids: Iterable[str]) -> None:
        """Remove what this node keeps of jobs that ended (none that still runs here), of
        those this agent's coordd made."""
        running = {w.job_id for w in self.workers.values()}
        for job_id in set(job_ids) - running:
            log.info("job.scratch_removed", job=job_id, reason="the job ended")
            await asyncio.to_thread(self.scratch.remove_job, job_id, self.coordd_id)

    async def _watch(self, worker: Worker) -> None:
        proc = worker.process
        await asyncio.gather(
            self._pump(proc.stdout, worker.job_id, worker.generation, worker.rank,
                       types_pb2.LOG_STREAM_STDOUT),
            self._pump(proc.stderr, worker.job_id, worker.generation, worker.rank,
                       types_pb2.LOG_STREAM_STDERR))
        code = await proc.wait()
        worker.lifeline.close()
        worker.done.set()
        log.info("worker.exited", job=worker.job_id, generation=worker.generation,
                 rank=worker.rank, code=code)
        self._report(worker.job_id, worker.generation, worker.rank,
                     agent_pb2.WORKER_PHASE_EXITED, exit_code=code)
        self.workers.pop((worker.job_id, worker.generation, worker.rank), None)
        self.prewarm()

    async def _pump(self, stream: asyncio.StreamReader, job_id: str, generation: int,
                    rank: int, kind: int) -> None:
        controls = kind == types_pb2.LOG_STREAM_STDOUT and rank >= 0  # workers' stdout only
        while True:
            try:
                raw = await stream.readline()
            except ValueError:  # a line longer than the limit: take what is buffered
                raw = await stream.read(MAX_LINE)
                raw += b" [line cut at 16 KiB]\n"
            if not raw:
                return
            text = raw.decode("utf-8", errors="replace").rstrip("\n")
            control = control_lines.parse(text, rank) if controls else None
            if control is not None:
                event, data = control
                if event == control_lines.WORKER_INPROCESS:
                    self._warm_beside(job_id, generation, rank)
                self.outbox.put(agent_pb2.AgentMessage(event=agent_pb2.AgentEvent(
                    job_id=job_id, generation=generation, kind=event, data_json=json.dumps(data),
                    message=f"rank {rank}: {event}")))
                continue
            stamp = Timestamp()
            stamp.GetCurrentTime()
            self.outbox.log(types_pb2.LogLine(job_id=job_id, generation=generation, rank=rank,
                                              stream=kind, time=stamp, text=text))

    def _report(self, job_id: str, generation: int, rank: int, phase: int, exit_code: int = 0,
                pid: int = 0, detail: str = "") -> None:
        change = agent_pb2.WorkerStateChange(job_id=job_id, generation=generation, rank=rank,
                                             phase=phase, exit_code=exit_code, pid=pid,
                                             detail=detail)
        if phase in (agent_pb2.WORKER_PHASE_EXITED, agent_pb2.WORKER_PHASE_FAILED_TO_START):
            self._exits[(job_id, generation, rank)] = change
            while len(self._exits) > MAX_REMEMBERED_EXITS:
                del self._exits[next(iter(self._exits))]
        self.outbox.put(agent_pb2.AgentMessage(worker_state=change))

    async def _ping(self) -> None:
        """Tell every worker this agent still runs (see agent/lifeline.py)."""
        while True:
            for worker in list(self.workers.values()):
                worker.lifeline.send("ping")
            await asyncio.sleep(PING_S)

    def reconfigure(self, msg: agent_pb2.Reconfigure) -> None:
        """coordd re-formed the job's replicas in place, or names where the job's quorum
        service runs now (after a failover): tell its running workers."""
        workers = [w for w in self.workers.values()
                   if w.job_id == msg.job_id and not w.done.is_set()]
        if address := msg.env.get("TORCHFT_LIGHTHOUSE"):
            log.info("agent.quorum_moved", job=msg.job_id, address=address)
            for worker in workers:
                worker.lifeline.send("quorum", address=address)
        if "COORD_DROPPED_REPLICAS" in msg.env:
            dropped = [r for r in msg.env["COORD_DROPPED_REPLICAS"].split(",") if r]
            log.info("agent.reformed", job=msg.job_id, generation=msg.generation,
                     dropped=dropped)
            for worker in workers:
                worker.lifeline.send("reformed", generation=msg.generation, dropped=dropped)

    # stop ----------------------------------------------------------------------------
    async def stop(self, job_id: str | None, generation: int, grace_s: float) -> None:
        """Stop the workers of `job_id` (every job when None) of `generation` or older."""
        def stopped(x: Worker | Preparing) -> bool:
            return (job_id is None or x.job_id == job_id) and x.generation <= generation

        for preparing in filter(stopped, self._preparing):
            preparing.stop_grace_s = grace_s
        targets = list(filter(stopped, self.workers.values()))
        await asyncio.gather(*(self._stop_one(w, grace_s) for w in targets))

    async def _stop_one(self, worker: Worker, grace_s: float) -> None:
        _signal_group(worker.process.pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(worker.done.wait(), grace_s)
        except TimeoutError:
            log.warning("worker.killed", job=worker.job_id, rank=worker.rank, grace_s=grace_s)
            _signal_group(worker.process.pid, signal.SIGKILL)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(worker.done.wait(), 5)

    async def close(self, grace_s: float) -> None:
        if self.warm is not None:
            await self.warm.close()
        await self.stop(None, 2**62, grace_s)
        for task in [*self._tasks, *filter(None, [self._pinging])]:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for job_id, node_id in self._scratch_of:  # the node is leaving: its memory goes too
            await asyncio.to_thread(self.scratch.remove_node, job_id, node_id)


async def _spawn_cold(command: str, job_dir: Path,
                      env: dict[str, str]) -> tuple[asyncio.subprocess.Process, Lifeline]:
    lifeline = Lifeline()
    try:
        proc = await asyncio.create_subprocess_exec(
            "bash", "-c", command, cwd=job_dir, env={**env, **lifeline.env()},
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, process_group=0, limit=MAX_LINE,
            pass_fds=(lifeline.read_fd,))
    except OSError:
        lifeline.close()
        raise
    lifeline.spawned()
    return proc, lifeline


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


