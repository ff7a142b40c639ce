"""The `local` provider: each node is a `coord-agent` process on this machine, in a session of
its own with its own work directory, standing in for a host. No cloud account needed."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import os
import re
import shutil
import signal
import sys
from collections.abc import Mapping
from pathlib import Path

import structlog

from contract.agentenv import WARM_START_ENV
from contract.errors import InvalidSpec
from contract.scratch import ROOT_ENV, Scratch, owner, snapshot_root
from contract.spec import JobSpec
from coordinator.providers.base import AgentAccess, Provider
from coordinator.providers.imds import MetadataStandIn
from coordinator.providers.localio import download_local, exec_local, upload_local
from coordinator.providers.procs import process_alive, session_pids, signal_session
from coordinator.settings import LocalSettings
from coordinator.store import JobRecord, NodeRecord

log = structlog.get_logger("coordinator.providers.local")
# A node that stopped answering (frozen) gets this long to act on SIGTERM before SIGKILL.
LOST_KILL_AFTER_S = 30.0
# Where a job id (NAME-8 hex digits, see JobManager.submit) may end in a flat folder's name.
LEGACY_JOB_PREFIX = re.compile(r"(?<=.-)[0-9a-f]{8}(?=-)")
# The memory local nodes may never count on (docs/install.md): a share of the machine's, at
# least a floor, for the system, coordd and the rest of what runs here.
RESERVED_SHARE = 0.10
RESERVED_MIN_MB = 1024.0


def agent_command(bin_dir: Path | None = None) -> list[str]:
    """The installed `coord-agent` script beside this interpreter (in `bin_dir`), so `ps`
    and `pgrep coord-agent` find a local node's agent; `python -m agent.main` where none is
    installed."""
    script = (bin_dir or Path(sys.executable).parent) / "coord-agent"
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script)]
    return [sys.executable, "-m", "agent.main"]


def legacy_job_ids(name: str) -> set[str]:
    """The job ids (NAME-8 hex digits) a flat snapshot folder's name `JOB_ID-NODE_ID` may
    start with."""
    return {name[:m.end()] for m in LEGACY_JOB_PREFIX.finditer(name)
            if name[m.end():m.end() + 1] == "-" and m.end() + 1 < len(name)}


class LocalProvider(Provider):
    name = "local"

    def __init__(self, nodes_dir: Path, access: AgentAccess, stop_grace_s: float,
                 settings: LocalSettings | None = None):
        self.nodes_dir = nodes_dir
        self.settings = settings or LocalSettings()
        self.access = access
        self.stop_grace_s = stop_grace_s
        self._procs: dict[str, asyncio.subprocess.Process] = {}
        # Nodes a previous coordd started whose agents outlived it (it crashed): the registry's
        # records, so their state is current when coordd stops.
        self._adopted: dict[str, NodeRecord] = {}
        self._metadata: dict[str, MetadataStandIn] = {}
        self._workers: dict[str, int] = {}  # node id -> its workers, to share the cores
        self.notice_poll_s = 0.5  # rehearsals should not take AWS's 5 s
        # This coordd's nodes keep their snapshots apart from other coordds' on this machine,
        # so that sweeping the jobs it does not know never touches another's.
        tag = hashlib.sha256(str(nodes_dir.resolve()).encode()).hexdigest()[:12]
        self.snapshot_root = snapshot_root(nodes_dir) / f"coordd-{tag}"

    async def launch(self, nodes: list[NodeRecord], job: JobRecord, spec: JobSpec) -> None:
        cpus = self._cpu_share(len(nodes), spec.nproc_per_node)
        for node in nodes:
            workdir = self.nodes_dir / node.id
            self._metadata[node.id] = await MetadataStandIn().start()
            proc = await self._spawn(node.id, workdir, self._metadata[node.id].endpoint,
                                     warm=spec.nodes.spares > 0, cpus=cpus)
            self._workers[node.id] = spec.nproc_per_node
            self._procs[node.id] = proc
            node.host = "127.0.0.1"
            node.provider_data = {"pid": proc.pid, "workdir": str(workdir)}
            log.info("node.launched", node=node.id, pid=proc.pid, workdir=str(workdir))

    def check_fits(self, spec: JobSpec, source: str) -> str:
        """Every node is an agent and its workers on this machine: refuse a job whose nodes
        cannot all have the memory each takes; warn when they fit only the idle machine."""
        memory = read_memory()
        return fit_verdict(spec, self.settings, source, memory) if memory else ""

    def _cpu_share(self, count: int, nproc: int) -> int:
        """The cores a new node's workers share: those coordd may run on, split evenly among
        every local worker (those of live nodes and the new ones), so they do not oversubscribe
        them."""
        live = sum(n for node_id, n in self._workers.items() if node_id in self._procs)
        per_worker = max(1, len(os.sched_getaffinity(0)) // (live + count * nproc))
        return per_worker * nproc

    def interrupt(self, node: NodeRecord, action: str) -> None:
        """Make the node's metadata announce an interruption, as EC2 would."""
        self._metadata[node.id].announce(action or "terminate")

    async def _spawn(self, node_id: str, workdir: Path, metadata: str,
                     warm: bool, cpus: int) -> asyncio.subprocess.Process:
        """One agent process. Local nodes share this machine's cores with everything else,
        so they keep a warm interpreter (see agent/warm.py) only for a job with spares, whose
        idle nodes are there to start at once; a COORD_AGENT_WARM_START set for coordd wins."""
        await asyncio.to_thread(workdir.mkdir, parents=True, exist_ok=True)
        agent_log = await asyncio.to_thread(open, workdir / "agent.log", "ab")
        try:
            return await asyncio.create_subprocess_exec(
                *agent_command(), "--coordinator", self.access.address(),
                "--node-id", node_id, "--workdir", str(workdir), "--host", "127.0.0.1",
                "--imds-endpoint", metadata, "--imds-interval", str(self.notice_poll_s),
                "--stop-grace", str(self.stop_grace_s),  # within the patience of terminate()
                "--cpus", str(cpus),
                stdin=asyncio.subprocess.DEVNULL, stdout=agent_log, stderr=agent_log,
                start_new_session=True,  # the node's processes are exactly this session
                env={WARM_START_ENV: "1" if warm else "0", **os.environ, **self.access.agent_env(),
                     ROOT_ENV: str(self.snapshot_root)})
        finally:
            agent_log.close()

    async def terminate(self, node: NodeRecord, *, lost: bool) -> None:
        pid = node.provider_data.get("pid")
        if not pid:
            return
        try:
            os.kill(pid, signal.SIGTERM)  # the agent stops its workers, then exits
        except ProcessLookupError:
            pass
        patience = LOST_KILL_AFTER_S if lost else self.stop_grace_s + 5
        if not await self._wait_gone(node.id, pid, patience):
            killed = signal_session(pid, signal.SIGKILL)
            log.warning("node.killed", node=node.id, pid=pid, processes=killed)
            await self._wait_gone(node.id, pid, 5)
        self._procs.pop(node.id, None)
        self._workers.pop(node.id, None)
        if workdir := node.provider_data.get("workdir"):  # its memory goes with the machine
            await asyncio.to_thread(self._scratch(Path(workdir)).remove_node_everywhere, node.id)
        if metadata := self._metadata.pop(node.id, None):
            await metadata.close()

    async def start(self, known: Mapping[str, NodeRecord]) -> None:
        self._adopted = {node.id: node for node in known.values()
                         if node.provider == self.name and node.state.alive
                         and node.provider_data.get("pid")}

    async def close(self) -> None:
        """coordd is stopping: its local nodes are its children in all but name, so they go
        too (their agents stop their workers gracefully first), adopted ones included."""
        pending = [NodeRecord(id=node_id, provider=self.name, provider_data={"pid": proc.pid})
                   for node_id, proc in self._procs.items() if proc.returncode is None]
        pending += [node for node in self._adopted.values()
                    if node.state.alive and node.id not in self._procs]
        await asyncio.gather(*(self.terminate(node, lost=False) for node in pending))
        for metadata in self._metadata.values():
            await metadata.close()
        with contextlib.suppress(OSError):  # empty once no job of this coordd left anything
            await asyncio.to_thread(self.snapshot_root.rmdir)

    def _scratch(self, workdir: Path) -> Scratch:
        return Scratch(self.snapshot_root, workdir)

    def scratch_jobs(self, coordd_id: str) -> list[str]:
        """Jobs of `coordd_id` that any node of this coordd, live or gone, keeps snapshots or
        temp files of."""
        workdirs = [p for p in self.nodes_dir.glob("*") if p.is_dir()]
        return sorted({job for w in workdirs or [self.nodes_dir]
                       for job in self._scratch(w).jobs(coordd_id)})

    async def sweep(self, ended: list[str], coordd_id: str) -> None:
        """At start: remove what jobs that ended (or this coordd does not know) left behind,
        on nodes SIGKILLed before they could remove it themselves."""
        workdirs = [p for p in self.nodes_dir.glob("*") if p.is_dir()] or [self.nodes_dir]
        for job_id in ended:
            log.info("local.scratch_swept", job=job_id)
            for workdir in workdirs:
                await asyncio.to_thread(self._scratch(workdir).remove_job, job_id, coordd_id)

    def legacy_snapshots(self) -> dict[Path, set[str]]:
        """Snapshot folders of the flat layout agents used before (`ROOT/JOB_ID-NODE_ID`),
        each with the job ids its name may start with."""
        found = {}
        with contextlib.suppress(OSError):
            for path in self.snapshot_root.parent.iterdir():
                if path.is_dir() and not path.is_symlink() and owner(path) is None:
                    if candidates := legacy_job_ids(path.name):
                        found[path] = candidates
        return found

    async def sweep_legacy(self, paths: list[Path]) -> None:
        for path in paths:
            log.info("local.legacy_snapshots_swept", path=str(path))
            await asyncio.to_thread(shutil.rmtree, path, True)

    async def gone(self, node: NodeRecord) -> bool:
        pid = node.provider_data.get("pid")
        return bool(pid) and not await asyncio.to_thread(process_alive, pid)

    # node verbs: the node is a directory on this machine -----------------------------------
    def exec(self, node: NodeRecord, command: str):
        return exec_local(node.id, node.provider_data["workdir"], command)

    async def upload(self, node: NodeRecord, path: str, chunks) -> str:
        return await upload_local(node.id, node.provider_data["workdir"], path, chunks)

    def download(self, node: NodeRecord, path: str):
        return download_local(node.id, node.provider_data["workdir"], path)

    async def _wait_gone(self, node_id: str, sid: int, timeout: float) -> bool:
        """True once no process of the node's session is left."""
        proc = self._procs.get(node_id)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        if proc is not None:  # our child: reap it so it does not linger as a zombie
            try:
                await asyncio.wait_for(proc.wait(), timeout)
            except TimeoutError:
                return False
        while loop.time() < deadline:
            if not await asyncio.to_thread(session_pids, sid):
                return True
            await asyncio.sleep(0.1)
        return not await asyncio.to_thread(session_pids, sid)


@dataclasses.dataclass(frozen=True)
class Memory:
    """This machine's memory (MB): in all, and what is available now (/proc/meminfo)."""

    total_mb: float
    available_mb: float

    @property
    def reserved_mb(self) -> float:
        """Kept for the system, coordd and whatever else runs here."""
        return max(RESERVED_MIN_MB, RESERVED_SHARE * self.total_mb)

    @property
    def usable_mb(self) -> float:
        return max(0.0, self.total_mb - self.reserved_mb)


def fit_verdict(spec: JobSpec, s: LocalSettings, source: str, memory: Memory) -> str:
    """InvalidSpec when the job's nodes could never all run on this machine (they do not fit
    its memory less the reserve); a warning ("" if none) when they fit that, but not the
    memory available now: other work may end, so the job is taken, with that said."""
    n = spec.nodes
    per_node = s.agent_memory_mb + spec.nproc_per_node * s.worker_memory_mb
    wanted = n.count + n.spares
    asked = f"nodes.count = {n.count}" + (f" + nodes.spares = {n.spares}" if n.spares else "")
    each = (f"each takes about {per_node:.0f} MB (an agent, {s.agent_memory_mb:g} MB, and "
            f"nproc_per_node = {spec.nproc_per_node} worker(s) of at least "
            f"{s.worker_memory_mb:g} MB; coordd settings local.agent_memory_mb, "
            "local.worker_memory_mb)")
    if wanted > (fit := _fit(per_node, memory.usable_mb, wanted)):
        raise InvalidSpec(
            f"{source}: {asked}: at most {fit} local node(s) fit this machine: {each}, and "
            f"it has {memory.total_mb:.0f} MB, {memory.reserved_mb:.0f} MB of it kept for "
            "the system")
    if wanted > (now := _fit(per_node, memory.available_mb, wanted)):
        return (f"{asked}: only {now} local node(s) fit the memory available now "
                f"({memory.available_mb:.0f} MB; {each}): the job's nodes may run short of "
                "memory until other work on this machine ends")
    return ""


def _fit(per_node: float, memory_mb: float, wanted: int) -> int:
    return int(memory_mb // per_node) if per_node else wanted


def read_memory() -> Memory | None:
    """MemTotal and MemAvailable of /proc/meminfo; None where there is none (not Linux)."""
    found: dict[str, float] = {}
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                key, _, value = line.partition(":")
                if key in ("MemTotal", "MemAvailable"):
                    found[key] = int(value.split()[0]) / 1024
    except (OSError, ValueError, IndexError):
        return None
    if len(found) < 2:
        return None
    return Memory(found["MemTotal"], found["MemAvailable"])
