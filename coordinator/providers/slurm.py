"""The `slurm` provider: each node is one Slurm job (one task on one Slurm node) whose batch
script becomes `coord-agent`. A lost node is replaced by a new allocation while the others
keep training.

Slurm is asked through its commands (slurmcli.py: locally or on a login node over SSH), not
slurmrestd: every cluster that lets its users submit has sbatch and squeue, while slurmrestd
needs its own daemon, JWT set-up and an admin's consent. A poll of squeue (and of sinfo for
the nodes our allocations run on) sees an allocation end, fail or lose its node, as the
agent's stream does; the first to notice loses the node. Allocations carry the coordd's tag
in their comment, so a restarted coordd adopts its own and cancels the orphans."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import shlex
import time
from collections.abc import Mapping
from pathlib import Path

import structlog

from contract import events as ev
from contract.errors import InvalidSpec, PartialLaunch, ProviderError
from contract.spec import JobSpec, SlurmResources
from contract.states import NodeState
from coordinator.providers.base import AgentAccess, JobEvents, Provider
from coordinator.providers.slurmcli import LocalShell, Result, SshShell
from coordinator.providers.slurmjobs import (SQUEUE_FORMAT, SlurmJob, batch_script, dead_nodes,
                                             explain_refusal, merged, parse_squeue, sbatch_argv)
from coordinator.providers.sshhost import shell_path, tail
from coordinator.settings import SlurmSettings
from coordinator.store import JobRecord, NodeRecord

log = structlog.get_logger("coordinator.providers.slurm")
# Time in the queue is not boot time: the registry's join clock must never lose a queued
# node (nodes.wait_for_min_s decides how long a job waits); the poll applies
# slurm.join_timeout_s from the moment the allocation runs.
QUEUED_FOREVER_S = 10 * 365 * 24 * 3600.0


class SlurmProvider(Provider):
    name = "slurm"

    def __init__(self, settings: SlurmSettings, access: AgentAccess, stop_grace_s: float,
                 events: JobEvents, state_dir: Path):
        self.settings, self.access, self.stop_grace_s = settings, access, stop_grace_s
        self.events = events
        self.shell = (SshShell(settings.login, settings.connect_timeout_s) if settings.login
                      else LocalShell())
        self.tag = "coordd=" + hashlib.sha256(str(state_dir.resolve()).encode()).hexdigest()[:12]
        self.join_timeout_s = QUEUED_FOREVER_S  # read by the registry
        self._nodes: dict[str, NodeRecord] = {}   # launched or adopted, by id
        self._seen: dict[str, SlurmJob] | None = None  # the last squeue, by node id
        self._running_since: dict[str, float] = {}
        self._root: str | None = None
        self._root_lock = asyncio.Lock()
        self._poller: asyncio.Task | None = None

    # set-up ------------------------------------------------------------------------------
    async def _prepare(self) -> str:
        """The work directory, absolute, owner-only, with the agents' credentials in it."""
        async with self._root_lock:
            if self._root is None:
                base = shell_path(self.settings.workdir)
                root = (await self._ok(f"mkdir -p {base} && chmod 700 {base} && cd {base} && "
                                       "pwd", "prepare the work directory")).stdout.strip()
                secrets = shlex.quote(f"{root}/agent.env")
                env = "".join(f"{key}={shlex.quote(value)}\n"
                              for key, value in self.access.agent_env().items())
                await self._ok(f"umask 077 && cat > {secrets}.new && mv {secrets}.new {secrets}",
                               "write the agents' credentials", stdin=env)
                self._root = root
            return self._root

    async def _ok(self, script: str, what: str, stdin: str | None = None) -> Result:
        result = await self.shell.run(script, stdin)
        if result.status != 0:
            raise ProviderError(f"slurm: could not {what} on {self.shell.where}: "
                                f"{tail(result.stderr or result.stdout)}")
        return result

    # submit ------------------------------------------------------------------------------
    async def vet(self, spec: JobSpec, source: str) -> None:
        """`sbatch --test-only`: Slurm's own checks of partition, account, qos, gres and
        limits, with nothing queued."""
        res = merged(self.settings.defaults, spec.resources.slurm)
        root = await self._prepare()
        argv = sbatch_argv(res, "check", self.tag, root, self.settings.signal_before_end_s,
                           test_only=True)
        result = await self._sbatch(argv, self._script(root, "check"))
        if result.status != 0:
            offered = await self._gres_offered(res) if res.gres else ""
            raise InvalidSpec(f"{source}: {explain_refusal(result.stderr, res)}{offered}")

    async def _gres_offered(self, res: SlurmResources) -> str:
        """What the partition's nodes offer, for a refusal that may be about `gres`."""
        where = f"-p {shlex.quote(res.partition)}" if res.partition else ""
        result = await self.shell.run(f"sinfo -h {where} -o '%P %G'")
        offered = sorted({line.strip() for line in result.stdout.splitlines() if line.strip()})
        return f" (gres by partition: {', '.join(offered)})" if offered else ""

    async def _sbatch(self, argv: list[str], script: str) -> Result:
        """sbatch copies its environment into the job, where `scontrol` may show it: coord's
        own variables (a client token, say) stay out."""
        return await self.shell.run("unset ${!COORD@}; " + shlex.join(argv), script)

    def _script(self, root: str, node_id: str) -> str:
        return batch_script(f"{root}/agent.env", self.settings.agent_command,
                            self.access.address(), node_id, f"{root}/{node_id}",
                            self.stop_grace_s)

    async def launch(self, nodes: list[NodeRecord], job: JobRecord, spec: JobSpec) -> None:
        res = merged(self.settings.defaults, spec.resources.slurm)
        root = await self._prepare()
        for index, node in enumerate(nodes):
            node_dir = f"{root}/{node.id}"
            await self._ok(f"mkdir -p {shlex.quote(node_dir)}", "make the node's directory")
            argv = sbatch_argv(res, node.id, self.tag, node_dir,
                               self.settings.signal_before_end_s)
            result = await self._sbatch(argv, self._script(root, node.id))
            if result.status != 0:
                failed = [n.id for n in nodes[index:]]
                raise PartialLaunch(failed, explain_refusal(result.stderr, res))
            job_id = result.stdout.strip().split(";")[0]
            node.provider_data = {"job_id": job_id, "workdir": f"{node_dir}/work",
                                  "log": f"{node_dir}/agent.log",
                                  "machine": f"slurm job {job_id} (queued)"}
            self._nodes[node.id] = node
            if node.state in (NodeState.LOST, NodeState.GONE):  # removed while submitting
                await self.terminate(node, lost=False)
                continue
            log.info(ev.SLURM_SUBMITTED, node=node.id, slurm_job=job_id)
            await self.events(job.id, ev.SLURM_SUBMITTED, f"node {node.id}: slurm job {job_id} "
                              "submitted", ev.SlurmJob(node=node.id, slurm_job=job_id))

    # remove ------------------------------------------------------------------------------
    async def terminate(self, node: NodeRecord, *, lost: bool) -> None:
        """scancel: Slurm sends the allocation SIGTERM (the agent stops its workers), then
        SIGKILL after the cluster's KillWait."""
        self._forget(node.id)
        if job_id := node.provider_data.get("job_id"):
            result = await self.shell.run(f"scancel {shlex.quote(job_id)}")
            log.info("slurm.cancelled", node=node.id, slurm_job=job_id, lost=lost,
                     status=result.status, error=result.stderr.strip()[:200])

    def _forget(self, node_id: str) -> None:
        self._nodes.pop(node_id, None)
        self._running_since.pop(node_id, None)

    # restart -----------------------------------------------------------------------------
    async def start(self, known: Mapping[str, NodeRecord]) -> None:
        """Adopt the allocations a live node still owns; cancel this coordd's others."""
        self._nodes.update({node_id: node for node_id, node in known.items()
                            if node.provider == self.name and
                            (node.state.alive or node.state == NodeState.JOINING)})
        try:
            self._seen = await self._list()
        except ProviderError as exc:  # the poll finds out later; orphans wait for a restart
            log.warning("slurm.list_failed", error=str(exc))
            self._seen = None
        for node_id, job in (self._seen or {}).items():
            if job.ended:
                continue
            if node_id in self._nodes:
                log.info("slurm.adopted", node=node_id, slurm_job=job.job_id, state=job.state)
            else:
                log.warning("slurm.orphan_cancelled", node=node_id, slurm_job=job.job_id)
                await self.shell.run(f"scancel {shlex.quote(job.job_id)}")
        self._poller = asyncio.create_task(self._poll_forever())

    async def gone(self, node: NodeRecord) -> bool:
        if self._seen is None:
            return False
        job = self._seen.get(node.id)
        return job is None or job.ended

    async def close(self) -> None:
        """Allocations outlive coordd: a restarted one adopts them."""
        if self._poller:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller
        await self.shell.close()

    # watching ----------------------------------------------------------------------------
    async def _list(self) -> dict[str, SlurmJob]:
        result = await self._ok(f"squeue --me -h -t all -o {shlex.quote(SQUEUE_FORMAT)}",
                                "list the allocations (squeue)")
        return parse_squeue(result.stdout, self.tag)

    async def _poll_forever(self) -> None:
        while True:
            await asyncio.sleep(self.settings.poll_interval_s)
            try:
                await self.poll()
            except ProviderError as exc:  # Slurm or the login node is away: ask again later
                log.warning("slurm.poll_failed", error=str(exc))
            except Exception:
                log.exception("slurm.poll_crashed")

    async def poll(self) -> None:
        self._seen = seen = await self._list()
        running = {job.node for job in seen.values() if job.state == "RUNNING" and job.node}
        dead = await self._dead(running) if running else {}
        for node_id, node in list(self._nodes.items()):
            if node.state in (NodeState.LOST, NodeState.GONE):
                self._forget(node_id)
            elif cause := await self._loss(node, seen.get(node_id), dead):
                self._forget(node_id)
                log.warning(ev.SLURM_NODE_LOST, node=node_id, cause=cause)
                await self.events(node.job_id, ev.SLURM_NODE_LOST, f"node {node_id}: {cause}",
                                  ev.SlurmNodeLost(node=node_id))
                if self.report_lost is not None:
                    await self.report_lost(node_id, cause)

    async def _dead(self, slurm_nodes: set[str]) -> dict[str, str]:
        names = ",".join(sorted(slurm_nodes))
        result = await self._ok(f"sinfo -h -N -n {shlex.quote(names)} -o '%N|%T'",
                                "read the nodes' states (sinfo)")
        return dead_nodes(result.stdout)

    async def _loss(self, node: NodeRecord, job: SlurmJob | None,
                    dead: dict[str, str]) -> str:
        """Why the node's allocation can no longer run its agent ("" while it can)."""
        job_id = node.provider_data.get("job_id", "?")
        if job is None or job.ended:
            why = f"ended ({job.state}, {job.reason})" if job else "left the queue"
            return f"slurm job {job_id} {why}" + await self._log_if_joining(node)
        if job.state == "PENDING" and job.reason not in ("None", node.provider_data.get("queued")):
            node.provider_data["queued"] = job.reason
            await self.events(node.job_id, ev.SLURM_QUEUED, f"node {node.id}: slurm job "
                              f"{job_id} waits in the queue ({job.reason})",
                              ev.SlurmQueued(node=node.id, slurm_job=job_id, reason=job.reason))
        if job.state != "RUNNING":
            return ""
        if node.provider_data.get("slurm_node") != job.node:
            node.provider_data.update(slurm_node=job.node,
                                      machine=f"slurm job {job_id} on {job.node}")
            self._running_since[node.id] = time.monotonic()
            await self.events(node.job_id, ev.SLURM_RUNNING, f"node {node.id}: slurm job "
                              f"{job_id} runs on {job.node}",
                              ev.SlurmJob(node=node.id, slurm_job=job_id))
        if job.node in dead:
            return f"slurm node {job.node} of job {job_id} is {dead[job.node]}"
        waited = time.monotonic() - self._running_since.get(node.id, time.monotonic())
        if node.state == NodeState.JOINING and waited > self.settings.join_timeout_s:
            return (f"slurm job {job_id} runs on {job.node} but its agent did not register "
                    f"within {self.settings.join_timeout_s:g} s"
                    + await self._log_if_joining(node))
        return ""

    async def _log_if_joining(self, node: NodeRecord) -> str:
        """For an agent that never registered: the end of its log, which says why."""
        path = node.provider_data.get("log")
        if node.state != NodeState.JOINING or not path:
            return ""
        with contextlib.suppress(ProviderError):
            result = await self.shell.run(f"tail -n 20 {shlex.quote(path)}")
            return f"; end of {path}: {tail(result.stdout or result.stderr)}"
        return ""
