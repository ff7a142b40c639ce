"""The gRPC servicers: JobService for clients, AgentService for node agents."""

from __future__ import annotations

import asyncio
import contextlib

import grpc
import structlog

from coord.v1 import agent_pb2, agent_pb2_grpc, jobs_pb2, jobs_pb2_grpc
from coordinator import convert
from coordinator.bus import Bus, drain
from coordinator.edge import rpc
from coordinator.errors import Conflict, InvalidSpec, NotFound
from coordinator.jobs import JobManager
from coordinator.metrics import Metrics
from coordinator.nodes import AgentSession, NodeRegistry
from coordinator.store import Store

log = structlog.get_logger("coordinator.service")
BUNDLE_CHUNK = 1 << 20


class JobService(jobs_pb2_grpc.JobServiceServicer):
    def __init__(self, jobs: JobManager, store: Store, bus: Bus, nodes: NodeRegistry,
                 metrics: Metrics):
        self.jobs, self.store, self.bus, self.nodes, self.metrics = jobs, store, bus, nodes, metrics

    @rpc
    async def SubmitJob(self, request, context):
        record = await self.jobs.submit(request.spec_json, request.source, request.bundle,
                                        request.dry_run)
        return jobs_pb2.SubmitJobResponse(job=convert.job(record))

    @rpc
    async def GetJob(self, request, context):
        return convert.job(await self.store.get_job(_ref(request.job)))

    @rpc
    async def ListJobs(self, request, context):
        records = await self.store.list_jobs(request.include_finished, request.limit or 100)
        return jobs_pb2.ListJobsResponse(jobs=[convert.job(r) for r in records])

    @rpc
    async def CancelJob(self, request, context):
        await self.jobs.cancel(_ref(request.job), request.reason[:1000])
        return convert.job(await self.store.get_job(_ref(request.job)))

    @rpc
    async def WatchJob(self, request, context):
        record = await self.store.get_job(_ref(request.job))
        with self.bus.subscribe("events", record.id) as live:
            last = request.after_seq
            for event in await self.store.events_after(record.id, last):
                last = event.seq
                yield convert.event(event)
            if not request.follow or (await self.store.get_job(record.id)).state.terminal:
                return
            async for event in drain(live):
                if event.seq > last:
                    last = event.seq
                    yield convert.event(event)

    @rpc
    async def StreamLogs(self, request, context):
        record = await self.store.get_job(_ref(request.job))
        rank = request.rank if request.has_rank else None
        with self.bus.subscribe("logs", record.id) as live:
            last = 0
            for line in await self.store.read_logs(record.id, node_id=request.node_id, rank=rank,
                                                   tail=max(0, request.tail)):
                last = line.id
                yield convert.log_line(line)
            if not request.follow or (await self.store.get_job(record.id)).state.terminal:
                return
            async for line in drain(live):
                if line.id > last and _matches(line, request.node_id, rank):
                    last = line.id
                    yield convert.log_line(line)

    @rpc
    async def InterruptNode(self, request, context):
        node = self.nodes.nodes.get(request.node_id)
        if node is None:
            raise NotFound(f"no node {request.node_id[:200]!r}")
        action = request.action or "terminate"
        if action not in ("terminate", "stop", "hibernate", "rebalance"):
            raise InvalidSpec(f"field 'action': {action[:40]!r} is not one of terminate, stop, "
                              "hibernate, rebalance")
        provider = self.nodes.providers.get(node.provider)
        if not hasattr(provider, "interrupt") or not node.state.alive:
            raise Conflict(f"node {node.id} ({node.provider}, {node.state}) cannot rehearse an "
                           "interruption: only live local nodes can")
        provider.interrupt(node, action)
        return convert.node(node)

    @rpc
    async def ListNodes(self, request, context):
        job_id = (await self.store.get_job(_ref(request.job))).id if request.job else None
        records = await self.store.list_nodes(job_id, request.include_gone)
        live = {n.id: n for n in self.nodes.nodes.values()}
        return jobs_pb2.ListNodesResponse(nodes=[convert.node(live.get(r.id, r)) for r in records])


def _ack(upto: int) -> agent_pb2.CoordinatorMessage:
    return agent_pb2.CoordinatorMessage(ack=agent_pb2.Ack(upto=upto))


def _ref(job: str) -> str:
    if not job or len(job) > 200:
        raise InvalidSpec("field 'job': give a job id or name (at most 200 characters)")
    return job


def _matches(line, node_id: str, rank: int | None) -> bool:
    return (not node_id or line.node_id == node_id) and (rank is None or line.rank == rank)


class AgentService(agent_pb2_grpc.AgentServiceServicer):
    def __init__(self, jobs: JobManager, nodes: NodeRegistry, metrics: Metrics):
        self.jobs, self.nodes, self.metrics = jobs, nodes, metrics

    async def Connect(self, request_iterator, context: grpc.aio.ServicerContext):
        first = await anext(aiter(request_iterator), None)
        if first is None or first.WhichOneof("body") != "register":
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                "the first message on the stream must be `register`")
        session = await self.nodes.register(first.register)
        log.info("agent.connected", node=session.node_id, peer=context.peer())
        if not session.closed:
            for change in first.register.exited:  # exits coordd may have missed while down
                self.jobs.on_worker_exit(session.node_id, change)
        yield agent_pb2.CoordinatorMessage(registered=agent_pb2.Registered(
            node_id=session.node_id,
            heartbeat_interval_s=self.nodes.settings.heartbeat_interval_s))
        reader = asyncio.create_task(self._read(session, request_iterator))
        try:
            while (message := await session.outbox.get()) is not None:
                yield message
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await reader
            await self.nodes.disconnected(session)
            log.info("agent.disconnected", node=session.node_id)

    async def _read(self, session: AgentSession, request_iterator) -> None:
        try:
            async for message in request_iterator:
                await self._handle(session, message)
        except Exception as exc:  # a broken stream is a disconnect, not a daemon crash
            log.info("agent.stream_error", node=session.node_id, error=repr(exc))
        session.close()

    async def _handle(self, session: AgentSession, message: agent_pb2.AgentMessage) -> None:
        if session.closed:
            return  # a fenced or replaced stream: nothing it says is accepted
        node = self.nodes.nodes[session.node_id]
        if message.seq and message.seq <= node.applied_seq:
            session.send(_ack(node.applied_seq))  # a replay of what we already applied
            return
        await self._apply(session, message)
        if message.seq:
            if message.WhichOneof("body") != "logs":  # logs record it with their lines
                await self.nodes.applied(node, message.seq)
            session.send(_ack(message.seq))

    async def _apply(self, session: AgentSession, message: agent_pb2.AgentMessage) -> None:
        match message.WhichOneof("body"):
            case "heartbeat":
                self.nodes.heartbeat(session, message.heartbeat)
            case "worker_state":
                state = message.worker_state
                if state.phase in (agent_pb2.WORKER_PHASE_EXITED,
                                   agent_pb2.WORKER_PHASE_FAILED_TO_START):
                    self.jobs.on_worker_exit(session.node_id, state)
            case "logs":
                await self.jobs.on_logs(self.nodes.nodes[session.node_id], message.logs,
                                        message.seq)
            case "event":
                await self.jobs.on_agent_event(session.node_id, message.event)
            case "leaving":
                node = self.nodes.nodes[session.node_id]
                if node.job_id:
                    await self.jobs.on_agent_event(session.node_id, agent_pb2.AgentEvent(
                        job_id=node.job_id, kind="node.leaving", message=message.leaving.reason))
                await self.nodes.leaving(session, message.leaving.reason)

    async def FetchBundle(self, request, context):
        try:
            path = self.jobs.bundle_path(request.digest)
            data = await asyncio.to_thread(path.read_bytes)
        except (InvalidSpec, OSError):
            raise_not_found = NotFound(f"no bundle {request.digest[:80]!r}")
            await context.abort(raise_not_found.code, str(raise_not_found))
        for offset in range(0, len(data), BUNDLE_CHUNK):
            yield agent_pb2.BundleChunk(data=data[offset:offset + BUNDLE_CHUNK])
