"""Progressive resizing: the phase table, and where a run is in it, measured in samples.

Small images early (cheap, large batches), large ones late (accurate), as in "ImageNet in 18
minutes". Phase boundaries are given in epochs and turned into sample counts once the data
set's size is known. Everything is a function of samples seen, so a job that changes world size
mid-phase stays in the same phase at the same point.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field, model_validator


class Phase(BaseModel):
    """One row of the table: epochs [start, end) at `size` px with its own batch and LR."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    epochs: tuple[float, float]
    size: int = Field(ge=8, description="training crop side in pixels")
    global_batch: int = Field(ge=1, description="images per step over all ranks")
    lr_scale: float = Field(1.0, gt=0.0, description="multiplies the batch-scaled LR")
    val_size: int | None = Field(None, ge=8, description="validation side; default: size")
    rect_val: bool = False  # validation on aspect-ratio-preserving rectangular crops

    @model_validator(mode="after")
    def _ordered(self) -> Phase:
        if not 0 <= self.epochs[0] < self.epochs[1]:
            raise ValueError(f"epochs must be [start, end) with 0 <= start < end, "
                             f"got {list(self.epochs)}")
        return self

    @property
    def eval_size(self) -> int:
        return self.val_size or self.size


@dataclass(frozen=True)
class PhaseSpan:
    """A phase located in the sample stream of a data set of a given size."""

    index: int
    phase: Phase
    start: int  # first sample of the phase
    end: int  # first sample after it

    def steps_left(self, samples_seen: int) -> int:
        """Steps of this phase's global batch still to run from `samples_seen`."""
        return max(0, math.ceil((self.end - samples_seen) / self.phase.global_batch))


class PhasePlan:
    """The phase table located in samples for a data set of `dataset_size` images."""

    def __init__(self, phases: list[Phase], dataset_size: int) -> None:
        if dataset_size < 1:
            raise ValueError("dataset_size must be >= 1")
        self.dataset_size = dataset_size
        self.spans = [PhaseSpan(i, p, round(p.epochs[0] * dataset_size),
                                round(p.epochs[1] * dataset_size))
                      for i, p in enumerate(phases)]

    @property
    def total_samples(self) -> int:
        return self.spans[-1].end

    def epoch(self, samples_seen: int) -> float:
        """Fractional epochs done."""
        return samples_seen / self.dataset_size

    def at(self, samples_seen: int) -> PhaseSpan:
        """The phase a step starting at `samples_seen` belongs to (the last one past the end).

        A phase's last step may overshoot its end by less than one batch; the next phase then
        starts from there, so no sample is skipped or repeated."""
        for span in self.spans:
            if samples_seen < span.end:
                return span
        return self.spans[-1]

    def remaining(self, samples_seen: int) -> list[PhaseSpan]:
        """Phases with work left, starting with the current one."""
        return [s for s in self.spans if s.end > samples_seen]
