"""Training progress on the simulated clock: how many steps are done, which are durable, and
what a loss costs. Progress is continuous between changes, so a two-week run costs one
update per change, not one per step.

With `scaling = "samples"` a job on w of its N nodes makes w/N of a full-size step per step
time; with "steps" it makes one step per step time at any size. Checkpoint saves are spread
over the steps between them (a save every `checkpoint_every_steps` steps costs `save_s`).
"""

from __future__ import annotations

import math
from collections.abc import Callable

from simulator.engine import Engine, Timer
from simulator.model import WorkloadModel


class Training:
    def __init__(self, engine: Engine, model: WorkloadModel, target: int,
                 on_finish: Callable[[], None]) -> None:
        self.engine, self.model, self.target, self.on_finish = engine, model, target, on_finish
        self.done = 0.0            # steps done (in memory or in peers' snapshots)
        self.active = 0            # replicas making progress
        self.stalled_until = 0.0
        self.steps_lost = 0
        self.finished_at: float | None = None
        self.committed = 0         # a step committed by a graceful stop (durable too)
        self.longest_stall = 0.0
        self.timeline: list[tuple[float, int, float]] = [(0.0, 0, 0.0)]
        self._since = 0.0
        self._last_progress: float | None = None
        self._timer: Timer | None = None
        per_step = model.step_time_s + model.save_s / model.checkpoint_every_steps
        self._step_s = per_step

    @property
    def durable(self) -> int:
        """The newest durable checkpoint's step."""
        every = self.model.checkpoint_every_steps
        return max(int(self.done // every) * every, self.committed)

    def rate(self, active: int | None = None) -> float:
        """Steps per second with `active` replicas."""
        active = self.active if active is None else active
        if active <= 0:
            return 0.0
        share = 1.0 if self.model.scaling == "steps" else min(active, self.target) / self.target
        return share / self._step_s

    def _advance(self) -> None:
        now, start = self.engine.now, max(self._since, self.stalled_until)
        if now > start and self.active > 0 and self.finished_at is None:
            self.done = min(self.model.steps_to_finish, self.done + (now - start) * self.rate())
            if self._last_progress is not None:
                self.longest_stall = max(self.longest_stall, start - self._last_progress)
            self._last_progress = now
        self._since = now

    def _changed(self) -> None:
        self.timeline.append((self.engine.now, self.active, self.done))
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        rate = self.rate()
        if rate > 0 and self.finished_at is None:
            start = max(self.engine.now, self.stalled_until)
            left = (self.model.steps_to_finish - self.done) / rate
            self._timer = self.engine.at(start + left, self._finish)

    def _finish(self) -> None:
        self._advance()
        self.done = float(self.model.steps_to_finish)
        self.finished_at = self.engine.now
        self.timeline.append((self.engine.now, self.active, self.done))
        self.on_finish()

    def set_active(self, active: int) -> None:
        if active == self.active:
            return
        self._advance()
        if self.active == 0 and self._last_progress is None and active > 0:
            self._last_progress = max(self.engine.now, self.stalled_until)
        self.active = active
        self._changed()

    def stall(self, seconds: float) -> None:
        """Every replica waits (an in-process re-formation)."""
        self._advance()
        self.stalled_until = max(self.stalled_until, self.engine.now + seconds)
        self._changed()

    def lose_in_flight(self) -> None:
        """A collective failed: the step in flight is redone; done steps are kept (each
        replica snapshots every step)."""
        self._advance()
        self.done = math.floor(self.done)
        self._changed()

    def commit(self) -> None:
        """Every replica stopped at a step boundary and committed it."""
        self._advance()
        self.committed = math.floor(self.done)

    def roll_back(self) -> None:
        """Everyone restarts from the newest durable checkpoint: the steps since are lost."""
        self._advance()
        self.steps_lost += math.floor(self.done) - self.durable
        self.done = float(self.durable)
        self._changed()
