"""Assembles coordd: store, bus, node registry, providers, job manager, gRPC server, and runs
them under one task group with an ordered, idempotent shutdown."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Callable

import grpc
import structlog

from coord.v1 import agent_pb2_grpc, jobs_pb2_grpc
from coordinator import statedir, tls
from coordinator.auth import AuthInterceptor, TokenStore, bootstrap
from coordinator.bus import Bus
from coordinator.edge import DecodeGuard
from coordinator.instance import InstanceLock, load_or_create_id
from coordinator.jobs import JobManager
from coordinator.leadership import Leadership
from coordinator.metrics import Metrics
from coordinator.nodes import NodeRegistry
from coordinator.providers.base import AgentAccess, JobEvents
from coordinator.providers.local import LocalProvider
from coordinator.retention import NodeRetention
from coordinator.service import AgentService, JobService
from coordinator.settings import CoorddSettings
from coordinator.standby import StandbyHandler
from coordinator.store import Store

log = structlog.get_logger("coordinator.server")
LOST_LEASE = 75  # EX_TEMPFAIL: coordd exits when it stops leading; start it again


class Coordinator:
    def __init__(self, settings: CoorddSettings):
        self.settings = settings
        self.address = ""
        self.dashboard_url = ""
        self.ready = asyncio.Event()
        self._stop = asyncio.Event()

    def advertised(self) -> str:
        return self.settings.advertise or self.address

    async def serve(self) -> None:
        s = self.settings  # the state directory exists: `coordd serve` created it
        lock = InstanceLock(s.state_dir, s.log_path)
        await asyncio.to_thread(lock.acquire)
        try:
            await self._serve(lock)
        finally:
            lock.release()

    async def _serve(self, lock: InstanceLock) -> None:
        s = self.settings
        for entry in await asyncio.to_thread(statedir.secure, s.state_dir):
            log.warning("statedir.permissions", path=str(entry.path), old=f"{entry.old_mode:04o}",
                        new=f"{entry.new_mode:04o}", fixed=not entry.error,
                        message=entry.describe())
        tokens = TokenStore(s.tokens_path)
        agent_token = await asyncio.to_thread(bootstrap, tokens, s.token_path,
                                              s.agent_token_path)
        files = await asyncio.to_thread(self._tls_files)
        store = await Store.open(s.database)
        metrics, bus = Metrics(), Bus()
        coordd_id = await asyncio.to_thread(load_or_create_id, s.state_dir / "coordd-id")
        holding = leadership = standby = None
        if store.engine.dialect.name == "postgresql":
            leadership = Leadership(store.engine, coordd_id, "", s.lease_s)
            holding, standby = await self._lead(store, leadership, tokens, files, lock, metrics)
        metrics.load.watch_commits(store.engine)
        jobs = JobManager(store, bus, s, metrics)
        jobs.coordd_id = coordd_id
        if leadership is not None:  # its Lighthouses serve only while it leads
            jobs.quorums.until, leadership.renewed = leadership.valid_until, jobs.quorums.renew
        access = AgentAccess(leadership.addresses if leadership else self.advertised, agent_token,
                             files.ca_pem.decode() if files else None, insecure=files is None)
        providers = {"local": LocalProvider(s.state_dir / "nodes", access, s.stop_grace_s,
                                            s.local)}
        if s.aws.enabled:
            from coordinator.providers.aws import AwsProvider  # aiobotocore: only when used
            providers["aws"] = AwsProvider(s.aws, access, s.state_dir, job_events(jobs))
        if s.ssh.hosts:
            from coordinator.providers.ssh import SshProvider  # asyncssh: only when used
            providers["ssh"] = SshProvider(s.ssh, access, s.stop_grace_s, job_events(jobs))
        if s.sim.spool_dir:
            from coordinator.providers.sim import SimProvider  # the scale benchmark's nodes
            providers["sim"] = SimProvider(s.sim.spool_dir)
        if s.slurm.enabled:
            from coordinator.providers.slurm import SlurmProvider  # only when used
            providers["slurm"] = SlurmProvider(s.slurm, access, s.stop_grace_s,
                                               job_events(jobs), s.state_dir)
        nodes = NodeRegistry(store, s, providers, jobs.router.on_node_change, metrics)
        jobs.attach(nodes)
        await nodes.load()
        for provider in providers.values():
            await provider.start(nodes.nodes)
        server = self._grpc_server(tokens, files, jobs, store, bus, nodes, metrics)
        await server.start()
        if standby is not None:  # both held the port (SO_REUSEPORT): it was never closed
            await standby.stop(grace=0)
        await asyncio.to_thread(lock.announce, self.address)
        log.info("coordd.listening", address=self.address, state_dir=str(s.state_dir))
        if s.metrics_listen and holding is None:
            metrics.serve(s.metrics_listen)
        dashboard = await start_dashboard(s, tokens, store, bus, jobs, nodes)
        self.dashboard_url = dashboard.url if dashboard else ""
        jobs.supervisor.start("node watchdog", nodes.watch)
        jobs.supervisor.start("node retention", NodeRetention(nodes, store, s).run)
        jobs.supervisor.start("loop lag", metrics.load.watch_loop)
        await jobs.resume()
        await sweep_local(providers["local"], jobs)
        self.ready.set()
        try:
            await self._stop.wait()
        finally:
            log.info("coordd.stopping")
            if dashboard is not None:
                await dashboard.stop()
            if holding is not None:
                holding.cancel()
            await server.stop(grace=2)
            await jobs.close()
            await nodes.close()
            await jobs.quorums.stop_all()
            if leadership is not None:  # last: nothing of this coordd acts after it
                await leadership.release()
            await store.close()
            log.info("coordd.stopped")

    async def _lead(self, store: Store, leadership: Leadership, tokens, files,
                    lock: InstanceLock, metrics: Metrics) -> tuple[asyncio.Task, grpc.aio.Server]:
        """On PostgreSQL: serve as a standby until this coordd leads, then guard the store's
        writes with its epoch. Returns the task that keeps the lease, and the standby server:
        it answers "the leader is here, retry" until the leader's own server listens."""
        s = self.settings
        standby = self._bind(grpc.aio.server(interceptors=[AuthInterceptor(tokens)]), files)
        leadership.address = self.advertised()
        standby.add_generic_rpc_handlers([StandbyHandler(lambda: leadership.leader_address)])
        await standby.start()
        await asyncio.to_thread(lock.announce, self.address)
        if s.metrics_listen:
            metrics.serve(s.metrics_listen)
        metrics.watch_leadership(leadership)
        log.info("coordd.standby", address=self.address, member=leadership.me)
        try:
            await leadership.campaign()
        except BaseException:
            await standby.stop(grace=0)
            raise
        store.guard, store.epoch = leadership.guard, leadership.epoch
        return asyncio.create_task(leadership.hold(_step_down)), standby

    def _tls_files(self) -> tls.TlsFiles | None:
        """None only when plaintext was asked for explicitly."""
        s = self.settings
        if s.insecure_plaintext:
            log.warning("coordd.plaintext", risk="tokens and specs cross the network "
                                                 "unencrypted; anyone on the path can read them")
            return None
        if s.tls_cert or s.tls_key:
            if not (s.tls_cert and s.tls_key):
                raise ValueError("tls_cert and tls_key go together: set both or neither")
            return tls.load_user_files(s.tls_cert, s.tls_key, s.tls_ca)
        host = s.listen.rpartition(":")[0]
        extra = list(s.tls_extra_names)
        if s.dashboard_listen:
            from coordinator.dashboard.server import tls_names
            extra += tls_names(s)
        names = tls.server_names(host, s.advertise.rpartition(":")[0], extra)
        return tls.ensure_generated(s.tls_dir, names)

    def _grpc_server(self, tokens, files, jobs, store, bus, nodes, metrics) -> grpc.aio.Server:
        limit = self.settings.max_message_bytes
        server = grpc.aio.server(
            interceptors=[AuthInterceptor(tokens), DecodeGuard()],
            options=[("grpc.max_receive_message_length", limit),
                     ("grpc.max_send_message_length", limit)])
        jobs_pb2_grpc.add_JobServiceServicer_to_server(
            JobService(jobs, store, bus, nodes, metrics), server)
        agent_pb2_grpc.add_AgentServiceServicer_to_server(AgentService(jobs, nodes, metrics), server)
        return self._bind(server, files)

    def _bind(self, server: grpc.aio.Server, files) -> grpc.aio.Server:
        """Listen; a second server of this coordd (the leader after the standby) takes the
        port the first one got."""
        host, _, port = self.settings.listen.rpartition(":")
        listen = f"{host}:{self.address.rpartition(':')[2]}" if self.address else \
            self.settings.listen
        if files is None:
            bound = server.add_insecure_port(listen)
        else:
            bound = server.add_secure_port(listen, grpc.ssl_server_credentials(
                [(files.key_pem, files.cert_pem)]))
        if bound == 0:
            raise OSError(f"cannot listen on {listen}")
        self.address = f"{host or '127.0.0.1'}:{bound if port == '0' else port}"
        return server

    def stop(self) -> None:
        self._stop.set()


def _step_down(why: str) -> None:
    """A leader that lost its lease exits at once, as in a crash: nothing it holds in memory
    may act again, and its supervisor (systemd) starts it anew as a standby."""
    log.error("leadership.lost", why=why, exit_code=LOST_LEASE)
    os._exit(LOST_LEASE)


def job_events(jobs: JobManager) -> JobEvents:
    """Where providers write what a user should read: the job's own event log."""
    return jobs.job_event


async def run(settings: CoorddSettings,
              on_ready: Callable[[Coordinator], None] | None = None) -> None:
    """Serve until SIGTERM or SIGINT; `on_ready` is called once coordd listens."""
    coordinator = Coordinator(settings)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, coordinator.stop)
    serving = asyncio.create_task(coordinator.serve())
    ready = asyncio.create_task(coordinator.ready.wait())
    await asyncio.wait({serving, ready}, return_when=asyncio.FIRST_COMPLETED)
    ready.cancel()
    if coordinator.ready.is_set() and on_ready is not None:
        on_ready(coordinator)
    await serving


async def start_dashboard(s: CoorddSettings, tokens, store, bus, jobs, nodes):
    """The web dashboard on `dashboard_listen`, or None when it is off."""
    if not s.dashboard_listen:
        return None
    from coordinator.dashboard.server import Dashboard  # starlette, uvicorn: only when used
    dashboard = Dashboard(s, tokens, store, bus, jobs, nodes)
    await dashboard.start()
    return dashboard


async def sweep_local(local: LocalProvider, jobs: JobManager) -> None:
    """What this coordd's local nodes left of jobs that ended: in its own layout (marked with
    its id), and in the flat layout agents used before (jobs it knows ended, only)."""
    held = await asyncio.to_thread(local.scratch_jobs, jobs.coordd_id)
    await local.sweep(await jobs.ended(held), jobs.coordd_id)
    legacy = await asyncio.to_thread(local.legacy_snapshots)
    ended = await jobs.known_ended({job for jobs_of in legacy.values() for job in jobs_of})
    await local.sweep_legacy([path for path, of in legacy.items() if of & ended])
