"""The agent's one bidirectional stream to coordd, re-opened with backoff and jitter when it
breaks. On every (re)connect the agent registers with its node id and the workers it still
runs, so a coordinator that restarted (or a network blip) never starts a rank twice."""

from __future__ import annotations

import asyncio
import random
import socket

import grpc
import structlog
from tenacity import AsyncRetrying, retry_if_exception, stop_after_delay, wait_exponential_jitter

from agent.outbox import Outbox
from agent.supervisor import Supervisor
from contract.transport import call_metadata, open_channel
from coord.leader import leader_hint, next_address, split_addresses
from coord.v1 import agent_pb2, agent_pb2_grpc, types_pb2

log = structlog.get_logger("agent.connection")
MAX_MESSAGE = 80 * 2**20
# A bundle fetch cut by a coordd restart is tried again for this long: a restarted coordd
# takes its running jobs back, and a rank that failed to start would restart them all.
BUNDLE_PATIENCE_S = 120.0


# coordd answers every heartbeat: this many intervals of silence (at least MIN_SILENCE_S)
# mean it is frozen or cut off, and the agent connects again (to the next of a set).
SILENT_HEARTBEATS = 5
MIN_SILENCE_S = 5.0
REGISTER_SILENCE_S = 15.0  # connect to registered, busy coordd included


class Drained(Exception):
    """The coordinator told this node to leave."""


class CoorddSilent(Exception):
    """coordd sent nothing for too long on an open stream."""


def free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("" if host in ("", "0.0.0.0") else host, 0))
        return sock.getsockname()[1]


class Connection:
    def __init__(self, address: str, token: str, node_id: str, host: str,
                 resources: types_pb2.Resources, outbox: Outbox, supervisor: Supervisor,
                 stop_grace_s: float, ca_pem: bytes | None = None, insecure: bool = False):
        self.address, self.token, self.node_id, self.host = address, token, node_id, host
        self.resources, self.outbox, self.supervisor = resources, outbox, supervisor
        self.stop_grace_s = stop_grace_s
        self.ca_pem, self.insecure = ca_pem, insecure
        # A set of coordd (`a:7070,b:7070`): the agent talks to the leader among them.
        self.addresses = split_addresses(address) or [address]
        self._open(self.addresses[0])

    def _open(self, address: str) -> None:
        self.address = address
        self.channel = open_channel(address, self.ca_pem, self.insecure, options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE),
            ("grpc.max_send_message_length", MAX_MESSAGE),
            ("grpc.keepalive_time_ms", 10_000),
            # a coordd frozen (SIGSTOP) or cut off is left within the new leader's
            # restart_grace_s: its TCP connection alone would look alive for minutes
            ("grpc.keepalive_timeout_ms", 5_000)])
        self.stub = agent_pb2_grpc.AgentServiceStub(self.channel)

    async def _follow(self, exc: grpc.aio.AioRpcError | None) -> None:
        """The stream broke (or coordd fell silent: None): to the leader a standby named,
        else the next coordd of the set."""
        hint = leader_hint(exc.trailing_metadata()) if exc else ""
        unavailable = exc is None or exc.code() == grpc.StatusCode.UNAVAILABLE
        if not unavailable or (len(self.addresses) == 1 and not hint):
            return
        following = next_address(self.addresses, self.address, hint)
        if following != self.address:
            log.info("agent.following", address=following, leader_named=bool(hint))
            await self.channel.close()
            self._open(following)

    async def fetch_bundle(self, job_id: str, digest: str) -> bytes:
        """The job's bundle from coordd, tried again while coordd cannot be reached."""
        async for attempt in AsyncRetrying(
                retry=retry_if_exception(_unreachable), reraise=True,
                stop=stop_after_delay(BUNDLE_PATIENCE_S),
                wait=wait_exponential_jitter(multiplier=0.2, max=5.0)):
            with attempt:
                chunks = self.stub.FetchBundle(
                    agent_pb2.FetchBundleRequest(job_id=job_id, digest=digest),
                    metadata=call_metadata(self.token))
                return b"".join([chunk.data async for chunk in chunks])
        raise AssertionError("unreachable")  # reraise=True: the loop returns or raises

    async def run_forever(self) -> None:
        """Connect, serve, and reconnect with exponential backoff and full jitter."""
        delay, attempt = 0.2, 0
        while True:
            attempt += 1
            try:
                await self._session()
                delay, attempt = 0.2, 0
            except Drained:
                return
            except CoorddSilent as exc:
                log.warning("agent.coordd_silent", detail=str(exc))
                await self._follow(None)
            except grpc.aio.AioRpcError as exc:
                if exc.code() == grpc.StatusCode.UNAUTHENTICATED:
                    log.error("agent.unauthenticated", detail=exc.details())
                log.warning("agent.disconnected", code=exc.code().name, detail=exc.details())
                await self._follow(exc)
                if leader_hint(exc.trailing_metadata()):
                    continue  # straight to the leader that was named
            pause = random.uniform(0, delay)
            log.info("agent.reconnecting", attempt=attempt + 1, after_s=round(pause, 3),
                     address=self.address)
            await asyncio.sleep(pause)
            # in a set, one of the others is the leader soon: try them more often
            delay = min(delay * 2, 5.0 if len(self.addresses) == 1 else 1.0)

    async def _session(self) -> None:
        self.outbox.rewind()
        register = agent_pb2.Register(node_id=self.node_id, host=self.host,
                                      resources=self.resources, agent_version="0.1.0",
                                      running=self.supervisor.running(),
                                      free_port=free_port(self.host),
                                      incarnation=self.outbox.incarnation,
                                      exited=self.supervisor.recent_exits(),
                                      scratch_jobs=self.supervisor.scratch.jobs())
        call = self.stub.Connect(self._requests(register), metadata=call_metadata(self.token))
        heartbeat: asyncio.Task | None = None
        messages, silence = aiter(call), REGISTER_SILENCE_S
        try:
            while True:
                try:
                    async with asyncio.timeout(silence):
                        message = await anext(messages)
                except StopAsyncIteration:
                    return
                except TimeoutError:
                    call.cancel()
                    raise CoorddSilent(f"nothing from {self.address} for {silence:.0f} s") \
                        from None
                body = message.WhichOneof("body")
                if body == "registered":
                    self.node_id = message.registered.node_id
                    self.supervisor.coordd_id = message.registered.coordd_id
                    log.info("agent.registered", node=self.node_id)
                    interval = message.registered.heartbeat_interval_s
                    heartbeat = asyncio.create_task(self._heartbeat(interval))
                    silence = max(MIN_SILENCE_S, SILENT_HEARTBEATS * interval)
                    await self.supervisor.forget(message.registered.finished_jobs)
                else:
                    await self._obey(message)
        finally:
            if heartbeat:
                heartbeat.cancel()

    async def _requests(self, register: agent_pb2.Register):
        yield agent_pb2.AgentMessage(register=register)
        queue = self.outbox.queue  # this stream's queue: a reconnect makes a new one
        while True:
            yield await queue.get()

    async def _heartbeat(self, interval: float) -> None:
        while True:
            self.outbox.put(agent_pb2.AgentMessage(
                heartbeat=agent_pb2.Heartbeat(free_port=free_port(self.host))), tracked=False)
            await asyncio.sleep(interval)

    async def _obey(self, message: agent_pb2.CoordinatorMessage) -> None:
        match message.WhichOneof("body"):
            case "ack":
                self.outbox.ack(message.ack.upto)
            case "start":
                self.supervisor.spawn(self.supervisor.start(message.start))
            case "stop":
                stop = message.stop
                log.info("agent.stop", job=stop.job_id, generation=stop.generation,
                         reason=stop.reason)
                self.supervisor.spawn(self.supervisor.stop(stop.job_id, stop.generation,
                                                           stop.grace_s))
            case "reconfigure":
                self.supervisor.reconfigure(message.reconfigure)
            case "drain":
                log.info("agent.drain", reason=message.drain.reason)
                await self.supervisor.close(message.drain.grace_s or self.stop_grace_s)
                raise Drained(message.drain.reason)

    async def close(self) -> None:
        await self.channel.close()


def _unreachable(exc: BaseException) -> bool:
    return isinstance(exc, grpc.aio.AioRpcError) and exc.code() == grpc.StatusCode.UNAVAILABLE
