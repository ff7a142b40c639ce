"""The baselines, each a simulated policy of its own (not coord with options switched off).

- static torchrun: a fixed world size. It waits for all N nodes; any loss restarts every
  worker from the newest durable checkpoint once a replacement has booted. It does not read
  spot notices: a noticed node is lost when it is taken.
- whole-cluster relaunch (what SkyPilot managed jobs do): any preemption or failure tears
  the whole cluster down and launches a new one, which resumes from the newest checkpoint.
- on-demand only: static torchrun on on-demand nodes (no preemptions, no capacity limits;
  hard failures still happen): the cost baseline.
"""

from __future__ import annotations

from simulator.cloud import Market, SimNode
from simulator.engine import Timer
from simulator.policy import PolicyRun

RETRY_S = 5.0  # a launch refused for capacity is tried again this much later


class StaticTorchrun(PolicyRun):
    name = "static torchrun"
    market: Market = "spot"

    def begin(self) -> None:
        self.up: set[str] = set()
        self._start: Timer | None = None
        self._want = 0
        self._launch(self.target)

    def _launch(self, count: int) -> None:
        self._want += count
        self._top_up()

    def _top_up(self) -> None:
        if self.ended_at is not None or self._want <= 0:
            return
        self._want -= len(self.cloud.launch(self._want))
        if self._want > 0:
            self.engine.after(RETRY_S, self._top_up)

    def node_ready(self, node: SimNode) -> None:
        self.up.add(node.id)
        if len(self.up) == self.target:
            delay = self.model.worker_cold_start_s + self.model.restore_s
            self._start = self.engine.after(delay, self.training.set_active, self.target)

    def node_died(self, node: SimNode) -> None:
        self.up.discard(node.id)
        self._stop_training()
        self.engine.after(self.model.detect_s, self._launch, 1)

    def _stop_training(self) -> None:
        """Every worker restarts: what was trained since the newest checkpoint is lost."""
        if self._start is not None:
            self._start.cancel()
            self._start = None
        if self.training.active:
            self.training.roll_back()
            self.training.set_active(0)
            self.reformations += 1

    def finished(self) -> None:
        self.end()


class WholeClusterRelaunch(StaticTorchrun):
    name = "whole-cluster relaunch"

    def begin(self) -> None:
        self._relaunching = False
        super().begin()

    def node_died(self, node: SimNode) -> None:
        self.up.discard(node.id)
        if self._relaunching:  # the cluster is being replaced already
            return
        self._relaunching = True
        self._stop_training()
        self.engine.after(self.model.detect_s, self._relaunch)

    def _relaunch(self) -> None:
        self._relaunching = False
        for other in list(self.cloud.nodes.values()):
            self.cloud.release(other)
        self.up.clear()
        self._want = 0
        self._launch(self.target)


class OnDemandOnly(StaticTorchrun):
    name = "on-demand only"
    market: Market = "on_demand"
