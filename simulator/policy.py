"""What every simulated policy shares: an engine, a cloud fed the trace, the training's
progress, and the figures a run ends with."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from simulator.cloud import Cloud, Market, SimNode
from simulator.engine import Engine
from simulator.model import WorkloadModel
from simulator.progress import Training
from simulator.traces import Trace


@dataclasses.dataclass
class Result:
    policy: str
    finished: bool
    time_to_finish_s: float | None
    node_hours: float
    cost: float
    goodput: float          # useful node-time (the ideal run's) / paid node-time
    steps_lost: int
    reformations: int
    longest_stall_s: float
    progress: float         # share of the job done
    missed_events: int      # trace events that hit no running node
    timeline: list[tuple[float, int, float]]

    @property
    def cost_per_job(self) -> float | None:
        return self.cost if self.finished else None


class PolicyRun:
    """One policy on one trace. Subclasses start the job in `begin` and react to the cloud
    through the Listener methods; `step` runs after each instant's events."""

    name = "policy"
    market: Market = "spot"

    def __init__(self, model: WorkloadModel, trace: Trace, target: int, seed: int) -> None:
        self.model, self.target = model, target
        self.engine = Engine()
        self.cloud = Cloud(self.engine, model, trace, self.market, seed, self)
        self.training = Training(self.engine, model, target, self.finished)
        self.reformations = 0
        self.ended_at: float | None = None

    # the cloud's news (Listener)
    def node_ready(self, node: SimNode) -> None: ...
    def node_noticed(self, node: SimNode) -> None: ...
    def node_died(self, node: SimNode) -> None: ...

    def begin(self) -> None: ...
    def step(self) -> None: ...
    def finished(self) -> None: ...

    def end(self) -> None:
        """The job is over: hand every node back and stop the clock."""
        for node in list(self.cloud.nodes.values()):
            self.cloud.release(node)
        self.ended_at = self.engine.now
        self.engine.stop()

    def run(self, horizon_s: float, tick: Callable[[float], None] | None = None) -> Result:
        self.engine.at(0.0, self.begin)
        batches = 0

        def after_batch() -> None:
            nonlocal batches
            self.step()
            batches += 1
            if tick is not None and batches % 256 == 0:
                tick(self.engine.now)

        self.engine.run(horizon_s, after_batch)
        if self.ended_at is None:  # out of time: bill what is still held until the horizon
            self.engine.now = max(self.engine.now, horizon_s)
        if tick is not None:
            tick(self.engine.now)
        return self.result()

    def result(self) -> Result:
        t, m = self.training, self.model
        node_hours = self.cloud.node_seconds() / 3600
        useful = t.done * m.step_time_s * self.target / 3600
        return Result(
            policy=self.name, finished=t.finished_at is not None, time_to_finish_s=t.finished_at,
            node_hours=node_hours, cost=node_hours * self.cloud.price_per_hour,
            goodput=useful / node_hours if node_hours else 0.0, steps_lost=t.steps_lost,
            reformations=self.reformations, longest_stall_s=t.longest_stall,
            progress=t.done / m.steps_to_finish, missed_events=self.cloud.missed,
            timeline=t.timeline)
