"""What a clean coordd stop does to a running job, and how such a job comes back.

Local nodes are coordd's children: a clean stop ends them, and the job's workers with them
(they are asked to commit and stop first). Workers say when a durable checkpoint is committed
(control line `checkpoint`) and which step a start resumed from (`restored`). At the stop a
job that reported a checkpoint is marked to resume, and comes back at coordd's next start on
new nodes from that checkpoint; a job that reported none is failed then, with that reason. A
job marked to resume whose workers then find no checkpoint is failed too: a job never
silently starts over from step 0.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from contract import events as ev

if TYPE_CHECKING:  # the store needs coordd's extra; the simulator loads this module without it
    from coordinator.store import EventRecord


@dataclasses.dataclass(frozen=True)
class CheckpointCommitted:
    """A worker committed a durable checkpoint of `step`."""
    generation: int
    node_id: str
    rank: int
    step: int


@dataclasses.dataclass(frozen=True)
class WorkerRestored:
    """A worker's start resumed from the checkpoint of `step` (0: it found none)."""
    generation: int
    node_id: str
    rank: int
    step: int


@dataclasses.dataclass
class ResumeState:
    """What the runner knows about the job's checkpoints: the newest step reported, the step
    a clean stop promised the job resumes from (until a start resumed), and, once the job's
    workers are found to have started over instead, the reason it must fail."""

    checkpoint_step: int | None = None
    expected_from: int | None = None
    started_over: str = ""
    checkpointed_in: set[int] = dataclasses.field(default_factory=set)  # worker generations
    restored_in: set[int] = dataclasses.field(default_factory=set)

    def replay(self, events: list[EventRecord]) -> None:
        """After a coordd restart, from the job's event log (a row that cannot be read is
        skipped: the runner's restore says so)."""
        for event in events:
            payload = ev.parse(event.kind, event.data_json)
            if isinstance(payload, ev.StepReport):
                generation, step = payload.worker_generation, payload.step
                if event.kind == ev.CHECKPOINT_COMMITTED:
                    self.first_checkpoint(CheckpointCommitted(generation, "", 0, step))
                else:
                    self.restored(WorkerRestored(generation, "", 0, step))
            elif isinstance(payload, ev.CoorddStopped):
                self.expected_from = payload.checkpoint_step if payload.resume else None

    def note_checkpoint(self, step: int) -> None:
        self.checkpoint_step = max(step, self.checkpoint_step or 0)

    def first_checkpoint(self, event: CheckpointCommitted) -> bool:
        """Note the checkpoint; True for its worker generation's first. Where a clean stop
        promised a resume, that first checkpoint also tells (for a script that does not say
        `restored`) whether the generation resumed or started over."""
        self.note_checkpoint(event.step)
        if event.generation in self.checkpointed_in:
            return False
        self.checkpointed_in.add(event.generation)
        self._check_resumed_from(event.step)
        return True

    def restored(self, event: WorkerRestored) -> bool:
        """True for a generation's first report that it resumed from a checkpoint (record
        it). A start below the step a clean stop promised sets `started_over`."""
        if event.generation in self.restored_in:
            return False
        self.restored_in.add(event.generation)
        if event.step > 0:
            self.note_checkpoint(event.step)
        self._check_resumed_from(event.step)
        return event.step > 0

    def _check_resumed_from(self, step: int) -> None:
        if self.expected_from is None:
            return
        if step < self.expected_from:
            self.started_over = started_over(self.expected_from)
        self.expected_from = None

    def stop_message(self) -> str:
        return ("coordd is stopping, and this job's local nodes stop with it (its workers "
                "are asked to commit and stop): at coordd's next start the job starts again on "
                f"new nodes and resumes from its newest checkpoint (step {self.checkpoint_step} "
                "or later)")

    def resuming_message(self) -> str:
        return (f"coordd started again after a clean stop that ended this job's local nodes: "
                f"the job starts on new nodes and resumes from its checkpoint (step "
                f"{self.expected_from} or later)")


NO_CHECKPOINT = ("coordd was stopped while the job ran on local nodes, which stop with it, and "
                 "no worker had reported a checkpoint to resume from (trainer.elastic reports "
                 "its checkpoints; a script of your own prints `::coord::checkpoint "
                 "{\"step\": N}` after each durable checkpoint and `::coord::restored "
                 "{\"step\": N}` when it resumes from one; see docs/coordd.md)")


def started_over(expected: int) -> str:
    return (f"coordd's clean stop promised this job would resume from its checkpoint (step "
            f"{expected} or later), but its workers found no checkpoint and would start over "
            "at step 0 (was the checkpoint directory removed?)")
