"""Admitting jobs: a submitted spec is checked, its bundle kept, its row and first events
written; a cancel is passed to the job's reconciler."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from pathlib import Path

import structlog

from contract import bundle as bundles
from contract import events as ev
from contract.errors import Conflict, InvalidSpec
from contract.spec import JobSpec, check_recorded_flags, parse_spec_json
from coordinator.launching import INSTALL_HINT
from coordinator.metrics import Metrics
from coordinator.nodes import NodeRegistry
from coordinator.quorum import lighthouse_available
from coordinator.store import JobRecord, Store

log = structlog.get_logger("coordinator.jobs")


class Admission:
    def __init__(self, store: Store, metrics: Metrics, bundle_dir: Path,
                 start_runner: Callable[[JobRecord, JobSpec], None]):
        self.store, self.metrics, self.bundle_dir = store, metrics, bundle_dir
        self.start_runner = start_runner
        self.nodes: NodeRegistry  # set by the server once providers exist

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
            record.id, ev.STATE, 0, f"submitted from {source or '?'}" +
            (f" with {' '.join(overrides)}" if overrides else ""),
            ev.StateChanged(new="PENDING", overrides=list(overrides)))
        if fit_warning:  # the nodes fit the machine but not the memory available now
            await self.store.append_event(record.id, ev.RESOURCES_TIGHT, 0, fit_warning,
                                          ev.Notice())
            log.warning(ev.RESOURCES_TIGHT, job=record.id, message=fit_warning)
        self.start_runner(record, spec)
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


def check_cancellable(record: JobRecord, running: bool) -> None:
    if record.state.terminal:
        raise Conflict(f"job {record.id} already ended: {record.state}")
    if not running:
        raise Conflict(f"job {record.id} has no running reconciler")
