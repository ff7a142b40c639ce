"""The simulated cloud: nodes that boot, are billed, fail and are preempted as a trace says.

One cloud per policy run, all fed the same trace and the same seed: every policy meets the
same failures at the same times in the same node slots, and the same boot times in order.
A spot node gets a notice `notice_lead_s` before it is taken; capacity below the nodes held
preempts the excess (with notice) and blocks launches until it rises again.
"""

from __future__ import annotations

import dataclasses
import heapq
import random
from collections.abc import Callable
from typing import Literal, Protocol

from simulator.engine import Engine
from simulator.model import WorkloadModel
from simulator.traces import Trace, TraceEvent

Market = Literal["spot", "on_demand"]


@dataclasses.dataclass(eq=False)
class SimNode:
    id: str
    slot: int
    launched_at: float
    ready_at: float | None = None   # agent registered; None while booting
    noticed_at: float | None = None
    ended_at: float | None = None   # terminated, dead or released: billing stops

    @property
    def alive(self) -> bool:
        return self.ended_at is None


class Listener(Protocol):
    def node_ready(self, node: SimNode) -> None: ...
    def node_noticed(self, node: SimNode) -> None: ...
    def node_died(self, node: SimNode) -> None: ...


class Cloud:
    def __init__(self, engine: Engine, model: WorkloadModel, trace: Trace, market: Market,
                 seed: int, listener: Listener) -> None:
        self.engine, self.model, self.market, self.listener = engine, model, market, listener
        self.rng = random.Random(seed)
        self.zones = trace.meta.zones
        self.capacity: int | None = None  # spot nodes obtainable; None: no limit
        self.nodes: dict[str, SimNode] = {}   # alive ones
        self.by_slot: dict[int, SimNode] = {}
        self._free_slots: list[int] = []      # a heap: a new node takes the lowest free slot
        self._noticed = 0                     # alive nodes under a spot notice
        self.billed_s = 0.0                   # node-seconds of ended nodes
        self.missed = 0                       # trace events that found no running node
        self._count = 0
        for event in trace.events:
            if market == "spot" or event.kind == "hard_failure":
                engine.at(event.time, self._apply, event)

    @property
    def price_per_hour(self) -> float:
        m = self.model
        return m.spot_price_per_hour if self.market == "spot" else m.on_demand_price_per_hour

    def node_seconds(self) -> float:
        now = self.engine.now
        return self.billed_s + sum(now - n.launched_at for n in self.nodes.values())

    def held(self) -> int:
        """Alive nodes not under a spot notice (those count against the capacity)."""
        return len(self.nodes) - self._noticed

    def launch(self, count: int) -> list[SimNode]:
        """Launch up to `count` nodes now (fewer when capacity is short); each registers after
        a boot time drawn from the model."""
        room = count if self.capacity is None else max(0, min(count, self.capacity - self.held()))
        created = []
        for _ in range(room):
            slot = heapq.heappop(self._free_slots) if self._free_slots else len(self.by_slot)
            node = SimNode(f"n{self._count}", slot, self.engine.now)
            self._count += 1
            self.nodes[node.id], self.by_slot[slot] = node, node
            self.engine.after(self.model.boot_time(self.rng), self._boot, node)
            created.append(node)
        return created

    def release(self, node: SimNode) -> None:
        if node.alive:
            self._end(node)

    def _end(self, node: SimNode) -> None:
        node.ended_at = self.engine.now
        self.billed_s += node.ended_at - node.launched_at
        del self.nodes[node.id]
        del self.by_slot[node.slot]
        heapq.heappush(self._free_slots, node.slot)
        self._noticed -= node.noticed_at is not None

    def _boot(self, node: SimNode) -> None:
        if node.alive:
            node.ready_at = self.engine.now
            self.listener.node_ready(node)

    def _targets(self, event: TraceEvent) -> list[SimNode]:
        if event.node is not None:
            node = self.by_slot.get(event.node)
            return [node] if node is not None else []
        return [n for n in self.by_slot.values() if f"z{n.slot % self.zones}" == event.zone]

    def _apply(self, event: TraceEvent) -> None:
        if event.kind == "capacity":
            return self._set_capacity(event.count)
        nodes = [n for n in self._targets(event) if n.ready_at is not None and
                 (event.kind == "hard_failure" or n.noticed_at is None)]
        self.missed += not nodes
        act: Callable[[SimNode], None] = (self._die if event.kind == "hard_failure"
                                          else self._notice)
        for node in nodes:
            act(node)

    def _die(self, node: SimNode) -> None:
        if node.alive:
            self._end(node)
            self.listener.node_died(node)

    def _notice(self, node: SimNode) -> None:
        node.noticed_at = self.engine.now
        self._noticed += 1
        self.engine.after(self.model.notice_lead_s, self._die, node)
        self.listener.node_noticed(node)

    def _set_capacity(self, count: int) -> None:
        self.capacity = count
        excess = self.held() - count
        if excess > 0:
            held = [n for n in self.nodes.values() if n.noticed_at is None]
            for node in self.rng.sample(held, excess):
                if node.ready_at is None:  # still booting: taken without a notice
                    self._end(node)
                    self.listener.node_died(node)
                else:
                    self._notice(node)
