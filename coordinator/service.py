"""The gRPC servicers: JobService for clients, AgentService for node agents."""

from __future__ import annotations

import asyncio
import contextlib
import re

import grpc
import structlog

from contract import events as ev
from contract.errors import Conflict, CoordError, InvalidSpec, NotFound
from contract.spec import MAX_COMMAND
from contract.states import NodeState
from coord.v1 import agent_pb2, agent_pb2_grpc, jobs_pb2, jobs_pb2_grpc
from coordinator import convert
from coordinator.bus import Bus, drain
from coordinator.edge import rpc
from coordinator.jobs import JobManager
from coordinator.metrics import Metrics
from coordinator.nodes import AgentSession, NodeRegistry
from coordinator.providers.base import Provider
from coordinator.store import NodeRecord, Store
from coordinator.streamlog import StreamFailures

log = structlog.get_logger("coordinator.service")
BUNDLE_CHUNK = 1 << 20


class JobService(jobs_pb2_grpc.JobServiceServicer):
    def __init__(self, jobs: JobManager, store: Store, bus: Bus, nodes: NodeRegistry,
                 metrics: Metrics):
        self.jobs, self.store, self.bus, self.nodes, self.metrics = jobs, store, bus, nodes, metrics

    @rpc
    async def SubmitJob(self, request, context):
        record = await self.jobs.submit(request.spec_json, request.source, request.bundle,
                                        request.dry_run, list(request.overrides))
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

    # node verbs: carried out by the node's provider ---------------------------------------
    @rpc
    async def ExecNode(self, request, context):
        node, provider = _reachable(self.nodes, request.node_id)
        if not request.command or len(request.command) > MAX_COMMAND:
            raise InvalidSpec(f"field 'command': give a command (at most {MAX_COMMAND} bytes)")
        # Closed here, not whenever it is collected: a client that goes away mid-stream must
        # have its command killed now.
        async with contextlib.aclosing(provider.exec(node, request.command)) as pieces:
            async for piece in pieces:
                yield jobs_pb2.ExecOutput(stdout=piece.stdout, stderr=piece.stderr,
                                          exit_code=piece.exit_code)

    @rpc
    async def UploadFile(self, request_iterator, context):
        first = await anext(aiter(request_iterator), None)
        if first is None:
            raise InvalidSpec("empty upload: the first chunk names the node and the path")
        node, provider = _reachable(self.nodes, first.node_id)
        size = 0

        async def chunks():
            nonlocal size
            size += len(first.data)
            yield first.data
            async for chunk in request_iterator:
                size += len(chunk.data)
                yield chunk.data
        path = await provider.upload(node, first.path, chunks())
        log.info("node.upload", node=node.id, path=path, bytes=size)
        return jobs_pb2.FileTransferred(path=path, size=size)

    @rpc
    async def DownloadFile(self, request, context):
        node, provider = _reachable(self.nodes, request.node_id)
        async with contextlib.aclosing(provider.download(node, request.path)) as chunks:
            async for data in chunks:
                yield jobs_pb2.FileChunk(data=data)

    @rpc
    async def ListNodes(self, request, context):
        if request.limit < 0 or request.offset < 0:
            raise InvalidSpec("fields 'limit' and 'offset': 0 or more")
        job_id = (await self.store.get_job(_ref(request.job))).id if request.job else None
        records = await self.store.list_nodes(job_id, request.include_gone, request.limit,
                                              request.offset)
        live = self.nodes.nodes  # newer than the rows: node writes are batched
        response = jobs_pb2.ListNodesResponse(
            nodes=[convert.node(live.get(r.id, r)) for r in records])
        if request.summary:
            for job, state, count in await self.store.count_nodes(job_id, request.include_gone):
                response.counts.add(job_id=job, state=state.to_proto(), count=count)
                response.total += count
        return response


def _reachable(nodes: NodeRegistry, node_id: str) -> tuple[NodeRecord, Provider]:
    """A node whose machine still exists, and the provider that can reach it."""
    node = nodes.nodes.get(node_id)
    if node is None:
        raise NotFound(f"no node {node_id[:200]!r} (see `coord nodes`)")
    if node.state in (NodeState.LOST, NodeState.GONE):
        raise Conflict(f"node {node.id} is {node.state}: its machine is gone")
    provider = nodes.providers.get(node.provider)
    if provider is None:
        raise Conflict(f"node {node.id} was started by hand: coord cannot reach its machine")
    return node, provider


def _ack(upto: int) -> agent_pb2.CoordinatorMessage:
    return agent_pb2.CoordinatorMessage(ack=agent_pb2.Ack(upto=upto))


def _ref(job: str) -> str:
    if not job or len(job) > 200:
        raise InvalidSpec("field 'job': give a job id or name (at most 200 characters)")
    return job


MAX_SEQ = 2**63 - 1  # stored in an SQLite INTEGER
NODE_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}")


def _check_register(register: agent_pb2.Register) -> None:
    """A node id and host end up in paths, tables and peers' MASTER_ADDR: keep them plain."""
    if register.node_id and not NODE_ID_RE.fullmatch(register.node_id):
        raise InvalidSpec("field 'register.node_id': letters, digits and '._:@-', at most 128")
    if len(register.host) > 255 or any(c.isspace() or not c.isprintable()
                                       for c in register.host):
        raise InvalidSpec("field 'register.host': a host name or address (at most 255 "
                          "characters, no spaces)")
    if len(register.agent_version) > 64 or len(register.incarnation) > 64:
        raise InvalidSpec("fields 'register.agent_version' and 'register.incarnation': at "
                          "most 64 characters")
    if len(register.scratch_jobs) > 1024 or any(len(j) > 128 for j in register.scratch_jobs):
        raise InvalidSpec("field 'register.scratch_jobs': at most 1024 job ids of at most 128 "
                          "characters")
    software = register.resources.software
    if len(software) > 32 or any(len(name) > 64 for name in software):
        raise InvalidSpec("field 'register.resources.software': at most 32 names of at most "
                          "64 characters")


def _cause(exc: BaseException) -> str:
    """What ended an agent's stream, as a short label (a metric's, a summary's key)."""
    if isinstance(exc, (asyncio.CancelledError, GeneratorExit)):
        return "cancelled"  # the agent, its connection or gRPC gave the call up
    if isinstance(exc, grpc.aio.AioRpcError):
        return exc.code().name.lower()
    return type(exc).__name__


def _matches(line, node_id: str, rank: int | None) -> bool:
    return (not node_id or line.node_id == node_id) and (rank is None or line.rank == rank)


class AgentService(agent_pb2_grpc.AgentServiceServicer):
    def __init__(self, jobs: JobManager, nodes: NodeRegistry, metrics: Metrics):
        self.jobs, self.nodes, self.metrics = jobs, nodes, metrics
        self.failures = StreamFailures(metrics.load.stream_failures)

    @rpc
    async def Connect(self, request_iterator, context: grpc.aio.ServicerContext):
        first = session = None
        try:  # until the agent has `registered`: a failure here is a failed attempt
            first = await anext(aiter(request_iterator), None)
            if first is None or first.WhichOneof("body") != "register":
                self.failures.record("no_register", peer=context.peer())
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                    "the first message on the stream must be `register`")
            session = await self._register(first.register, context)
            yield agent_pb2.CoordinatorMessage(registered=agent_pb2.Registered(
                node_id=session.node_id,
                heartbeat_interval_s=self.nodes.settings.heartbeat_interval_s,
                finished_jobs=await self.jobs.ended(first.register.scratch_jobs),
                coordd_id=self.jobs.coordd_id))
        except grpc.aio.AbortError:
            raise
        except BaseException as exc:  # noqa: BLE001 - recorded, then as it was
            self.failures.record(_cause(exc), phase="register", peer=context.peer(),
                                 node=first.register.node_id[:128] if first else "")
            if session is not None:  # registered, but never heard so: suspect from now
                self.nodes.spawn(self.nodes.disconnected(session))
            raise
        reader = asyncio.create_task(self._read(session, request_iterator))
        try:
            while (message := await session.outbox.get()) is not None:
                yield message
            if reader.done() and (error := reader.result()):
                raise error
        finally:
            # When the agent vanishes this handler is cancelled, and an await here could be
            # cut short by the next cancellation: the node would never be marked suspect, and
            # its job would not ask for a replacement until the reconnect grace ran out.
            self.nodes.spawn(self.nodes.disconnected(session))
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await reader

    async def _register(self, register: agent_pb2.Register, context) -> AgentSession:
        _check_register(register)
        session = await self.nodes.register(register)
        log.info("agent.connected", node=session.node_id, peer=context.peer())
        if not session.closed:
            # exits coordd may have missed while down
            self.jobs.router.on_worker_exits(session.node_id, register.exited)
            self.jobs.tell_quorums(session.node_id, (w.job_id for w in register.running))
        return session

    async def _read(self, session: AgentSession, request_iterator) -> CoordError | None:
        """Apply the agent's messages until the stream ends; a message that breaks the
        protocol ends it too, and is returned so the agent hears why."""
        try:
            async for message in request_iterator:
                await self._handle(session, message)
        except CoordError as exc:
            self.failures.record("bad_message", node=session.node_id, error=str(exc)[:300])
            return exc
        except Exception as exc:  # a broken stream is a disconnect, not a daemon crash
            self.failures.record(_cause(exc), phase="serve", node=session.node_id,
                                 error=repr(exc)[:300])
        finally:
            session.close()
        return None

    async def _handle(self, session: AgentSession, message: agent_pb2.AgentMessage) -> None:
        if session.closed:
            return  # a fenced or replaced stream: nothing it says is accepted
        node = self.nodes.nodes[session.node_id]
        if message.seq > MAX_SEQ:  # checked before it reaches the node record
            raise InvalidSpec(f"field 'seq': at most {MAX_SEQ}")
        if message.seq and message.seq <= node.applied_seq:
            session.send(_ack(node.applied_seq))  # a replay of what we already applied
            return
        if message.WhichOneof("body") == "logs":  # stored with its lines, then acked
            await session.store_in_order(lambda: self._store_logs(session, node, message))
            return
        if message.seq:
            await session.stored()
        await self._apply(session, message)
        if message.seq:
            await self.nodes.applied(node, message.seq)
            session.send(_ack(message.seq))

    async def _store_logs(self, session: AgentSession, node: NodeRecord,
                          message: agent_pb2.AgentMessage) -> None:
        await self.jobs.router.on_logs(node, message.logs, message.seq)
        if message.seq:
            session.send(_ack(message.seq))

    async def _apply(self, session: AgentSession, message: agent_pb2.AgentMessage) -> None:
        match message.WhichOneof("body"):
            case "heartbeat":
                self.nodes.heartbeat(session, message.heartbeat)
                # the answer tells the agent this coordd is alive: one frozen (SIGSTOP) or
                # cut off keeps a TCP connection open that only its silence gives away
                session.send(_ack(self.nodes.nodes[session.node_id].applied_seq))
            case "worker_state":
                state = message.worker_state
                if state.phase in (agent_pb2.WORKER_PHASE_EXITED,
                                   agent_pb2.WORKER_PHASE_FAILED_TO_START):
                    self.jobs.router.on_worker_exits(session.node_id, (state,))
            case "event":
                await self.jobs.router.on_agent_event(session.node_id, message.event)
            case "leaving":
                node = self.nodes.nodes[session.node_id]
                if node.job_id and node.state.alive:  # not one coordd released (job ended)
                    await self.jobs.router.on_agent_event(session.node_id, agent_pb2.AgentEvent(
                        job_id=node.job_id, kind=ev.NODE_LEAVING, message=message.leaving.reason))
                await self.nodes.leaving(session, message.leaving.reason)

    @rpc
    async def FetchBundle(self, request, context):
        try:
            path = self.jobs.bundle_path(request.digest)
            data = await asyncio.to_thread(path.read_bytes)
        except (InvalidSpec, OSError):
            raise_not_found = NotFound(f"no bundle {request.digest[:80]!r}")
            await context.abort(raise_not_found.code, str(raise_not_found))
        for offset in range(0, len(data), BUNDLE_CHUNK):
            yield agent_pb2.BundleChunk(data=data[offset:offset + BUNDLE_CHUNK])
