"""Assembles coordd: store, bus, node registry, providers, job manager, gRPC server, and runs
them under one task group with an ordered, idempotent shutdown."""

from __future__ import annotations

import asyncio
import signal

import grpc
import structlog

from coord.v1 import agent_pb2_grpc, jobs_pb2_grpc
from coordinator.auth import TokenInterceptor, load_or_create_token
from coordinator.bus import Bus
from coordinator.jobs import JobManager
from coordinator.metrics import Metrics
from coordinator.nodes import NodeRegistry
from coordinator.providers.base import AgentAccess
from coordinator.providers.local import LocalProvider
from coordinator.service import AgentService, JobService
from coordinator.settings import CoorddSettings
from coordinator.store import Store

log = structlog.get_logger("coordinator.server")


class Coordinator:
    def __init__(self, settings: CoorddSettings):
        self.settings = settings
        self.address = ""
        self.ready = asyncio.Event()
        self._stop = asyncio.Event()

    def advertised(self) -> str:
        return self.settings.advertise or self.address

    async def serve(self) -> None:
        s = self.settings
        await asyncio.to_thread(s.state_dir.mkdir, parents=True, exist_ok=True)
        token = await asyncio.to_thread(load_or_create_token, s.token_path)
        store = await Store.open(s.db_path)
        metrics, bus = Metrics(), Bus()
        jobs = JobManager(store, bus, s, metrics)
        access = AgentAccess(self.advertised, token)
        providers = {"local": LocalProvider(s.state_dir / "nodes", access, s.stop_grace_s)}
        nodes = NodeRegistry(store, s, providers, jobs.on_node_change, metrics)
        jobs.nodes = nodes
        await nodes.load()
        server = self._grpc_server(token, jobs, store, bus, nodes, metrics)
        await server.start()
        await asyncio.to_thread(s.addr_path.write_text, self.address + "\n")
        log.info("coordd.listening", address=self.address, state_dir=str(s.state_dir))
        if s.metrics_listen:
            metrics.serve(s.metrics_listen)
        watchdog = asyncio.create_task(nodes.watch())
        await jobs.resume()
        self.ready.set()
        try:
            await self._stop.wait()
        finally:
            log.info("coordd.stopping")
            watchdog.cancel()
            await server.stop(grace=2)
            await jobs.close()
            await nodes.close()
            await store.close()
            log.info("coordd.stopped")

    def _grpc_server(self, token, jobs, store, bus, nodes, metrics) -> grpc.aio.Server:
        limit = self.settings.max_message_bytes
        server = grpc.aio.server(
            interceptors=[TokenInterceptor(token)],
            options=[("grpc.max_receive_message_length", limit),
                     ("grpc.max_send_message_length", limit)])
        jobs_pb2_grpc.add_JobServiceServicer_to_server(
            JobService(jobs, store, bus, nodes, metrics), server)
        agent_pb2_grpc.add_AgentServiceServicer_to_server(AgentService(jobs, nodes, metrics), server)
        host, _, port = self.settings.listen.rpartition(":")
        bound = server.add_insecure_port(self.settings.listen)
        if bound == 0:
            raise OSError(f"cannot listen on {self.settings.listen}")
        self.address = f"{host or '127.0.0.1'}:{bound if port == '0' else port}"
        return server

    def stop(self) -> None:
        self._stop.set()


async def run(settings: CoorddSettings) -> None:
    coordinator = Coordinator(settings)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, coordinator.stop)
    await coordinator.serve()
