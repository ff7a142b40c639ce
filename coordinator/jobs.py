"""The job manager: one supervised reconciler runner per live job, built from the job's row;
admission, event routing, launching and quorum services are rooms of their own, wired here."""

from __future__ import annotations

import time
from collections.abc import Iterable
from pathlib import Path

import structlog

from contract.events import Payload
from contract.spec import JobSpec, parse_spec_json
from coordinator.admission import Admission, check_cancellable
from coordinator.bus import Bus
from coordinator.faults import fault_point
from coordinator.launching import Launcher, fault_mode
from coordinator.logbudget import LogBudget
from coordinator.logwriter import LogWriter
from coordinator.metrics import Metrics
from coordinator.nodes import NodeRegistry
from coordinator.quorum import QuorumUnavailable
from coordinator.quorums import Quorums
from coordinator.reconciler.events import Cancel
from coordinator.reconciler.policy import policy_for
from coordinator.reconciler.ports import Ports
from coordinator.reconciler.runner import JobRunner
from coordinator.reconciler.view import JobView
from coordinator.routing import Router
from coordinator.runnerports import coordd_ports
from coordinator.settings import CoorddSettings
from coordinator.store import JobRecord, Store
from coordinator.supervise import Supervisor

log = structlog.get_logger("coordinator.jobs")


class JobManager:
    def __init__(self, store: Store, bus: Bus, settings: CoorddSettings, metrics: Metrics):
        self.store, self.bus, self.settings, self.metrics = store, bus, settings, metrics
        self.runners: dict[str, JobRunner] = {}
        self.supervisor = Supervisor()
        self.quorums = Quorums(settings, self.job_event)
        self.admission = Admission(store, metrics, settings.state_dir / "bundles",
                                   self._start_runner)
        self.logs = LogWriter(store)
        self.router = Router(self.runners, self.logs, bus, LogBudget(
            store, settings.max_log_line_bytes, settings.max_log_bytes_per_job))
        self.ports: Ports
        self.coordd_id = ""  # set by the server: the id agents mark this coordd's folders with

    def attach(self, nodes: NodeRegistry) -> None:
        """The node registry, once the server built it with the providers."""
        self.nodes = self.admission.nodes = nodes
        nodes.on_forget = self.router.on_nodes_forgotten
        launcher = Launcher(nodes, self.quorums.address, self.job_event, self.checkpoint_dir,
                            self.settings.pause_threshold_s)
        self.ports = coordd_ports(self.store, nodes, launcher, self.quorums, self.metrics,
                                  self.bus, self.settings)

    def checkpoint_dir(self, record: JobRecord, spec: JobSpec) -> str:
        return spec.checkpoint_dir or str(self.settings.state_dir / "checkpoints" / record.id)

    def bundle_path(self, digest: str) -> Path:
        return self.admission.bundle_path(digest)

    async def submit(self, spec_json: str, source: str, bundle: bytes,
                     dry_run: bool, overrides: list[str] | None = None) -> JobRecord:
        return await self.admission.submit(spec_json, source, bundle, dry_run, overrides)

    async def cancel(self, ref: str, reason: str) -> JobRecord:
        record = await self.store.get_job(ref)
        check_cancellable(record, record.id in self.runners)
        self.runners[record.id].post(Cancel(reason or "cancelled by user"))
        return record

    async def job_event(self, job_id: str, kind: str, message: str, payload: Payload) -> None:
        """An event in the job's log, from outside its reconciler (providers, quorum)."""
        if runner := self.runners.get(job_id):
            await runner.event(kind, message, payload)

    # runners -------------------------------------------------------------------------
    def _runner(self, record: JobRecord, spec: JobSpec) -> JobRunner:
        """A runner whose view starts from the job's row (a restarted coordd's too)."""
        view = JobView(job_id=record.id, state=record.state, epoch=record.generation,
                       restarts=record.restarts, policy=policy_for(spec, self.settings,
                                                                   fault_mode(spec)),
                       members=list(record.node_ids), state_since=time.time(),
                       worker_generation=record.worker_generation, slots=dict(record.slots),
                       next_slot=record.next_slot)
        for node in self.nodes.nodes.values():
            if node.job_id == record.id:
                view.nodes[node.id] = self.nodes.view(node)
        return JobRunner(record, spec, view, self.ports)

    def _start_runner(self, record: JobRecord, spec: JobSpec) -> None:
        job_id, first = record.id, [record]

        async def run() -> None:
            # A restart after a crash starts from the store: the crash may have come mid-write.
            current = first.pop() if first else await self.store.get_job(job_id)
            runner = self._runner(current, spec)
            # What the job's checkpoints allow is known before the runner's first turn.
            runner.resume.replay(await self.store.events_after(job_id))
            self.runners[job_id] = runner
            fault_point("runner.start")
            try:
                await runner.run()
            finally:
                if runner.view.state.terminal:
                    self.runners.pop(job_id, None)

        async def gave_up(error: BaseException) -> None:
            runner = self.runners.pop(job_id, None) or self._runner(
                await self.store.get_job(job_id), spec)
            tries = self.supervisor.restarts + 1
            await runner.fail(f"coordd's reconciler for this job failed {tries} times in a row; "
                              f"the last error: {error!r}", cause="coordd_error")

        self.supervisor.start(f"reconciler {job_id}", run, gave_up)

    async def resume(self) -> None:
        """At start-up: a reconciler for every job that had not ended."""
        for record in await self.store.list_jobs(include_finished=False, limit=1000):
            self.metrics.job_added(record.state)
            spec = parse_spec_json(record.spec_json, record.id)
            self._start_runner(record, spec)
            if record.generation and fault_mode(spec) != "restart":
                try:  # supervised again: on its old port, or here after a failover
                    address = await self.quorums.address(record, spec)
                except QuorumUnavailable as exc:
                    log.error("quorum.unavailable", job=record.id, error=str(exc))
                    continue
                for node in list(self.nodes.nodes.values()):  # agents back already
                    if node.job_id == record.id:
                        self.nodes.tell_quorum(node.id, record.id, address)

    def tell_quorums(self, node_id: str, job_ids: Iterable[str]) -> None:
        """An agent (re)connected with workers of `job_ids`: where their quorum services
        run (agents that connect before `resume` started them are told by it)."""
        for job_id in set(job_ids):
            if address := self.quorums.running(job_id):
                self.nodes.tell_quorum(node_id, job_id, address)

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

    async def close(self) -> None:
        """coordd stops cleanly: end the reconcilers, then tell each job what the stop does
        to it (before the providers stop their nodes)."""
        runners = list(self.runners.values())
        await self.supervisor.close()
        for runner in runners:
            try:
                await runner.on_coordd_stop()
            except Exception:  # one job's trouble must not keep the others from being told
                log.exception("job.stop_failed", job=runner.record.id)
        await self.logs.close()
