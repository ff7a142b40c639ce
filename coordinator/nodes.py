"""The node registry: node records and their state machine, live agent sessions, the
heartbeat and reconnect watchdog, and the calls into providers.

A node is lost by one of two paths: its stream breaks and it does not come back within
`reconnect_grace_s`, or its heartbeats stop for `heartbeat_timeout_s` (a frozen or
partitioned host whose socket stays open).
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Awaitable, Callable

import structlog

from contract.errors import InvalidSpec, PartialLaunch
from contract.spec import JobSpec
from contract.states import NodeState, check_node_transition
from coord.v1 import agent_pb2
from coordinator import rejoin
from coordinator.metrics import Metrics
from coordinator.nodewriter import NodeWriter
from coordinator.providers.base import Provider
from coordinator.reconciler.view import NodeView
from coordinator.settings import CoorddSettings
from coordinator.store import JobRecord, NodeRecord, Store

log = structlog.get_logger("coordinator.nodes")
WATCH_INTERVAL_S = 0.2
LOG_WINDOW = 32  # log messages of one stream being stored at once


class AgentSession:
    """One connected agent stream. `outbox` feeds the stream; None closes it.

    A message's log lines are stored while the stream reads on (a heartbeat must not wait for
    the disk), in the order they came; a message after them that changes state waits for them
    (`stored`), so the node's applied sequence only moves forward over what is stored."""

    def __init__(self, node_id: str):
        self.node_id = node_id
        self.outbox: asyncio.Queue[agent_pb2.CoordinatorMessage | None] = asyncio.Queue()
        self.last_heartbeat = time.monotonic()
        self.free_port = 0
        self.closed = False
        self._writes: list[asyncio.Task] = []  # log messages being stored, oldest first

    async def store_in_order(self, write: Callable[[], Awaitable[None]]) -> None:
        """Start `write` once the writes before it are done; wait only while the stream
        has LOG_WINDOW of them in flight (an agent cannot queue without bound)."""
        before = self._writes[-1] if self._writes else None

        async def after() -> None:
            if before is not None:
                await before
            await write()
        task = asyncio.get_running_loop().create_task(after())
        self._writes.append(task)
        task.add_done_callback(self._written)
        if len(self._writes) >= LOG_WINDOW:
            await self.stored()

    def _written(self, task: asyncio.Task) -> None:
        self._writes.remove(task)
        if not task.cancelled() and (error := task.exception()) is not None:
            log.warning("agent.logs_not_stored", node=self.node_id, error=repr(error)[:300])
            self.close()  # the agent sends them again on its next stream

    async def stored(self) -> None:
        """Once every log message read so far is stored (raises if one could not be)."""
        if self._writes:
            await self._writes[-1]

    def send(self, message: agent_pb2.CoordinatorMessage) -> None:
        if not self.closed:
            self.outbox.put_nowait(message)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.outbox.put_nowait(None)


def node_id(job_name: str) -> str:
    """`node-NAME-6hex`: a node names its first job but never looks like a job id
    (`NAME-8hex`). Ids minted before this shape keep working: ids are only compared."""
    return f"node-{job_name[:40]}-{secrets.token_hex(3)}"


class NodeRegistry:
    def __init__(self, store: Store, settings: CoorddSettings, providers: dict[str, Provider],
                 on_change: Callable[[NodeRecord, NodeView], None], metrics: Metrics):
        self.store, self.settings, self.providers = store, settings, providers
        self.writer = NodeWriter(store)
        self.metrics = metrics
        self.on_change = on_change
        # Told which nodes of a job were forgotten (retention): its runner drops them.
        self.on_forget: Callable[[str, tuple[str, ...]], None] = lambda job_id, ids: None
        self.nodes: dict[str, NodeRecord] = {}
        self.sessions: dict[str, AgentSession] = {}
        self._suspect_since: dict[str, float] = {}
        self._before_suspect: dict[str, NodeState] = {}
        # Suspect or joining since coordd restarted: its provider may know that it is gone.
        self._reconnecting: set[str] = set()
        # JOINING nodes must register by this wall time. The clock starts once the provider
        # has launched the machine: a slow launch (capacity fallbacks) is not boot time.
        self._join_by: dict[str, float] = {}
        self._tasks: set[asyncio.Task] = set()
        metrics.load.agents.set_function(lambda: len(self.sessions))
        for provider in providers.values():
            provider.report_lost = self.provider_lost

    async def load(self) -> None:
        """At start-up: every node that was alive must reconnect within the restart grace,
        or it is lost (coordd may have been down for a while; agents retry with backoff)."""
        grace_from = time.monotonic() + self.settings.restart_grace_s - self.settings.reconnect_grace_s
        for node in await self.store.list_nodes():
            self.nodes[node.id] = node
            self.metrics.node_transition(None, node.state)
            if node.state.alive and node.state != NodeState.SUSPECT:
                self._before_suspect[node.id] = node.state
                await self.set_state(node, NodeState.SUSPECT, "coordd restarted")
            if node.state == NodeState.SUSPECT:
                self._suspect_since[node.id] = grace_from
                self._reconnecting.add(node.id)
            if node.state == NodeState.JOINING:
                self._join_by[node.id] = time.time() + self.join_timeout(node)
                self._reconnecting.add(node.id)

    def view(self, node: NodeRecord) -> NodeView:
        session = self.sessions.get(node.id)
        return NodeView(id=node.id, state=node.state, host=node.host,
                        free_port=session.free_port if session else 0,
                        joined_at=node.last_heartbeat,
                        reconnecting=node.state == NodeState.SUSPECT and
                        node.id in self._reconnecting)

    # state machine -------------------------------------------------------------------
    async def set_state(self, node: NodeRecord, new: NodeState, cause: str) -> None:
        old = node.state
        if old == new:
            return
        check_node_transition(old, new)
        node.state, node.state_since = new, time.time()
        self.writer.mark(node)
        self.metrics.node_transition(old, new)
        log.info("node.state", node=node.id, job=node.job_id, old=str(old), new=str(new),
                 cause=cause)
        if node.job_id:
            self.on_change(node, self.view(node))

    # providers -----------------------------------------------------------------------
    def provider(self, spec: JobSpec) -> Provider:
        try:
            return self.providers[spec.resources.provider]
        except KeyError:
            raise InvalidSpec(f"provider {spec.resources.provider!r} is not configured in "
                              f"coordd (configured: {', '.join(self.providers)})") from None

    def join_timeout(self, node: NodeRecord) -> float:
        """How long a launched node may take to register: machines that boot or install
        (EC2, ssh bootstrap) say so through their provider's `join_timeout_s`."""
        provider = self.providers.get(node.provider)
        return getattr(provider, "join_timeout_s", None) or self.settings.join_timeout_s

    async def acquire(self, job: JobRecord, spec: JobSpec, count: int) -> list[NodeView]:
        provider = self.provider(spec)
        records = [NodeRecord(id=node_id(job.name), provider=provider.name, job_id=job.id,
                              last_heartbeat=time.time()) for _ in range(count)]
        for node in records:
            self.nodes[node.id] = node
            self.metrics.node_transition(None, node.state)
        await self.writer.durable(*records)  # before the provider acts: nothing unrecorded
        try:
            await provider.launch(records, job, spec)
        except Exception as exc:
            # Records the provider could not bring up are lost now, with its reason, not at
            # the join timeout: their replacements are asked for at once, their machines freed.
            # After a partial launch only the failed ones: the others are booting.
            failed = set(exc.failed) if isinstance(exc, PartialLaunch) else {n.id for n in records}
            for node in records:
                if node.id in failed and node.state == NodeState.JOINING:
                    await self._lose(node.id, f"launch failed: {exc}"[:2000])
            kept = [n for n in records if n.id not in failed]
            self._start_join_clocks(kept)
            if isinstance(exc, PartialLaunch):
                exc.launched = [self.view(n) for n in kept]
            raise
        finally:
            for node in records:  # with what the provider recorded (machine ids, pids)
                self.writer.mark(node)
        self._start_join_clocks(records)
        return [self.view(n) for n in records]

    def _start_join_clocks(self, launched: list[NodeRecord]) -> None:
        for node in launched:
            self._join_by[node.id] = time.time() + self.join_timeout(node)

    async def release(self, node_id: str, reason: str) -> None:
        node = self.nodes.get(node_id)
        if node is None or node.state == NodeState.GONE:
            return
        already_terminated = node.state == NodeState.LOST  # _lose terminated it
        await self.set_state(node, NodeState.GONE, reason)
        session = self.sessions.pop(node_id, None)
        if session:
            session.send(agent_pb2.CoordinatorMessage(drain=agent_pb2.Drain(reason=reason)))
        provider = self.providers.get(node.provider)
        if provider and not already_terminated:
            self.spawn(provider.terminate(node, lost=False))

    # agent messages ------------------------------------------------------------------
    async def register(self, msg: agent_pb2.Register) -> AgentSession:
        node = self.nodes.get(msg.node_id) if msg.node_id else None
        session = AgentSession(msg.node_id)
        if node is not None and node.state in (NodeState.LOST, NodeState.GONE):
            if not rejoin.admit(node, msg, session, node.provider in self.providers):
                return session
            node = self._reincarnate(node)
        if node is None:  # started by hand: a pool node nobody asked for
            node = NodeRecord(id=msg.node_id or f"node-{secrets.token_hex(4)}", provider="static")
            self.nodes[node.id] = node
            self.metrics.node_transition(None, node.state)
        if msg.incarnation != node.incarnation:  # a new agent process counts from 1 again
            node.incarnation, node.applied_seq = msg.incarnation, 0
        node.host = msg.host or node.host
        node.resources = {"cpus": msg.resources.cpus, "gpus": msg.resources.gpus,
                          "memory_bytes": msg.resources.memory_bytes,
                          "software": sorted(set(msg.resources.software))}
        node.last_heartbeat = time.time()
        self.writer.mark(node)
        session.node_id, session.free_port = node.id, msg.free_port
        if old := self.sessions.get(node.id):
            old.close()
        self.sessions[node.id] = session
        self._reconnecting.discard(node.id)
        self._suspect_since.pop(node.id, None)
        back_to = self._before_suspect.pop(node.id, None)
        await self.set_state(node, back_to or NodeState.READY, "registered")
        return session

    def _reincarnate(self, dead: NodeRecord) -> NodeRecord:
        """A fresh record under the dead node's id: no job, JOINING until it registers."""
        fresh = NodeRecord(id=dead.id, provider=dead.provider)
        self.nodes[fresh.id] = fresh
        self.metrics.node_transition(dead.state, fresh.state)
        if dead.job_id:
            self.on_forget(dead.job_id, (dead.id,))
        return fresh

    def forget(self, job_nodes: dict[str, list[str]]) -> None:
        """Dead nodes whose records were removed (by job id, "" for none): out of memory too,
        and each job's runner told, so its view drops them."""
        for job_id, ids in job_nodes.items():
            for node_id in ids:
                node = self.nodes.get(node_id)
                if node is not None and node.state in (NodeState.LOST, NodeState.GONE):
                    del self.nodes[node_id]
                    self.metrics.node_removed(node.state)
            if job_id:
                self.on_forget(job_id, tuple(ids))

    async def applied(self, node: NodeRecord, seq: int) -> None:
        node.applied_seq = seq
        await self.writer.durable(node)

    def heartbeat(self, session: AgentSession, msg: agent_pb2.Heartbeat) -> None:
        now = time.monotonic()
        self.metrics.load.heartbeat_gap.observe(now - session.last_heartbeat)
        session.last_heartbeat = now
        session.free_port = msg.free_port or session.free_port

    async def leaving(self, session: AgentSession, reason: str) -> None:
        node = self.nodes[session.node_id]
        if node.state in (NodeState.READY, NodeState.ASSIGNED, NodeState.SUSPECT):
            await self.set_state(node, NodeState.DRAINING, reason or "leaving")

    async def disconnected(self, session: AgentSession) -> None:
        session.closed = True
        log.info("agent.disconnected", node=session.node_id)
        if self.sessions.get(session.node_id) is not session:
            return  # replaced by a newer stream, or already released
        del self.sessions[session.node_id]
        node = self.nodes[session.node_id]
        if node.state == NodeState.DRAINING:
            await self._lose(node.id, "left after draining")
        elif node.state.alive and node.state != NodeState.SUSPECT:
            self._before_suspect[node.id] = node.state
            self._suspect_since[node.id] = time.monotonic()
            await self.set_state(node, NodeState.SUSPECT, "stream closed")

    def free_port(self, node_id: str) -> int:
        """The port the node most recently reported free (each heartbeat refreshes it)."""
        session = self.sessions.get(node_id)
        return session.free_port if session else 0

    def send(self, node_id: str, message: agent_pb2.CoordinatorMessage) -> bool:
        session = self.sessions.get(node_id)
        if session is None:
            return False
        session.send(message)
        return True

    async def stop_workers(self, node_id: str, job_id: str, generation: int, reason: str,
                           grace_s: float | None = None) -> None:
        grace = self.settings.stop_grace_s if grace_s is None else grace_s
        self.send(node_id, agent_pb2.CoordinatorMessage(stop=agent_pb2.StopWorkers(
            job_id=job_id, generation=generation, grace_s=grace, reason=reason)))

    def tell_reformed(self, node_id: str, job_id: str, generation: int,
                      dropped: list[str]) -> None:
        """In-process mode: the node's running replicas learn which replicas coordd dropped
        (agent -> worker lifeline), so none counts them or waits on them any longer."""
        self.send(node_id, agent_pb2.CoordinatorMessage(reconfigure=agent_pb2.Reconfigure(
            job_id=job_id, generation=generation,
            env={"COORD_DROPPED_REPLICAS": ",".join(dropped)})))

    def tell_quorum(self, node_id: str, job_id: str, address: str) -> None:
        """In-process mode: where the job's quorum service runs now (the leader's, after a
        failover); the node's running replicas move their relay there."""
        self.send(node_id, agent_pb2.CoordinatorMessage(reconfigure=agent_pb2.Reconfigure(
            job_id=job_id, env={"TORCHFT_LIGHTHOUSE": address})))

    # watchdog ------------------------------------------------------------------------
    async def watch(self) -> None:
        while True:
            await asyncio.sleep(WATCH_INTERVAL_S)
            try:
                await self._check(time.monotonic())
            except Exception:  # a bad record must not end loss detection for every node
                log.exception("nodes.watch_failed")

    async def _check(self, now: float) -> None:
        s = self.settings
        for session in list(self.sessions.values()):
            if now - session.last_heartbeat > s.heartbeat_timeout_s:
                await self._lose(session.node_id, f"no heartbeat for {s.heartbeat_timeout_s:g} s")
        for node_id, since in list(self._suspect_since.items()):
            if now - since > s.reconnect_grace_s:
                await self._lose(node_id, f"stream down for more than {s.reconnect_grace_s:g} s")
        for node_id in list(self._reconnecting):
            await self._lose_if_gone(self.nodes[node_id])
        wall = time.time()
        for node_id, deadline in list(self._join_by.items()):
            node = self.nodes[node_id]
            if node.state != NodeState.JOINING:
                del self._join_by[node_id]
            elif wall > deadline:
                await self._lose(node_id, f"did not register within "
                                          f"{self.join_timeout(node):g} s of its launch")

    async def provider_lost(self, node_id: str, cause: str) -> None:
        """The provider saw the node's machine end: lost now, not at a timeout."""
        if node_id in self.nodes:
            await self._lose(node_id, cause)

    async def _lose_if_gone(self, node: NodeRecord) -> None:
        """A node that died while coordd was down would otherwise hold its place for the
        whole restart grace: ask its provider, which may know at once."""
        provider = self.providers.get(node.provider)
        if provider is not None and await provider.gone(node) and node.id in self._reconnecting:
            await self._lose(node.id, f"its agent is gone ({node.provider} provider): it "
                                      "cannot reconnect")

    async def _lose(self, node_id: str, cause: str) -> None:
        self._suspect_since.pop(node_id, None)
        self._before_suspect.pop(node_id, None)
        self._reconnecting.discard(node_id)
        if session := self.sessions.pop(node_id, None):
            session.close()
        node = self.nodes[node_id]
        if node.state.alive or node.state == NodeState.JOINING:
            await self.set_state(node, NodeState.LOST, cause)
            if provider := self.providers.get(node.provider):
                self.spawn(provider.terminate(node, lost=True))

    def spawn(self, coro) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        for session in list(self.sessions.values()):
            session.close()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        for provider in self.providers.values():
            await provider.close()
        await self.writer.close()
