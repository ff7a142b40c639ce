"""A job's reconciler with no I/O: the real `decide` and the real `evolve`, a clock the caller
moves, no sockets, processes or sleeps. Unit tests drive it one step at a time; a simulator
drives many jobs through a trace the same way.

    sim = Simulation(JobView("j", JobState.PENDING, 0, 0, policy))
    sim.step(0.0)                                   # -> [Transition, Acquire(3, ...)]
    sim.hear(NodesCreated((NodeView("n0", NodeState.READY), ...), 3), 1.0)
    sim.step(1.0)                                   # -> [StartGeneration(...)], and so on

What the runner would do outside the view (start workers, stop them, ask a provider for
nodes) is left to the caller: `step` returns the actions, and the caller answers with events
(a node joins, workers exit) as the world would.
"""

from __future__ import annotations

from coordinator.reconciler.decide import decide
from coordinator.reconciler.events import Event
from coordinator.reconciler.plan import Action
from coordinator.reconciler.reduce import evolve
from coordinator.reconciler.view import JobView


class Simulation:
    def __init__(self, view: JobView, now: float = 0.0):
        self.view, self.now = view, now
        self.history: list[tuple[float, Event | Action]] = []

    def hear(self, event: Event, now: float | None = None) -> None:
        """An event arrives (at `now`, else at the time of the last step)."""
        self.now = self.now if now is None else now
        self.view = evolve(self.view, event, self.now)
        self.history.append((self.now, event))

    def step(self, now: float) -> list[Action]:
        """One turn of the reconciler at `now`: decide, and apply each action to the view."""
        self.now = now
        actions = decide(self.view, now)
        for action in actions:
            self.view = evolve(self.view, action, now)
            self.history.append((now, action))
        return actions
