"""The step log (`steps.jsonl`) and the reconstruction of the committed lineage from it.

Rank 0 appends one JSON line per completed step, written with a single O_APPEND write so that
lines of concurrent writers (a slow worker of an old generation) never interleave. A step done
in generation g and done again in a later generation (because g+1 resumed from an older
checkpoint) was lost; `committed_history` separates those from the final lineage, and reports
gaps and repeats that would mean a committed step was skipped or applied twice.
"""

from __future__ import annotations

import itertools
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

STEPLOG_FILE = "steps.jsonl"


@dataclass(frozen=True)
class StepRecord:
    step: int
    generation: int
    loss: float | None
    samples: int
    t: float


class StepLog:
    """Appends step records; each line reaches the OS before the next step starts."""

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / STEPLOG_FILE
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

    def append(self, step: int, generation: int, loss: float | None, samples: int) -> None:
        line = json.dumps({"step": step, "generation": generation, "loss": loss,
                           "samples": samples, "t": time.time()}) + "\n"
        os.write(self._fd, line.encode())

    def backfill(self, step: int, generation: int, loss: float | None, samples: int,
                 batch: int | None = None) -> None:
        """Record `step` if the log lacks it: after a resume from a peer's state, the replica
        that completed it may not have been the one that logs. Given the global `batch`, also
        record the steps between the log's newest and `step` (no loss; samples counted back)."""
        newest = max((r.step for r in read_records(self.path)), default=0)
        first = newest + 1 if batch is not None else step
        for missing in range(max(first, newest + 1), step + 1):
            self.append(missing, generation, loss if missing == step else None,
                        samples - (step - missing) * (batch or 0))

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def read_records(path: Path) -> list[StepRecord]:
    """All parseable records in file order; a torn last line (writer killed) is skipped."""
    if not path.exists():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            raw = json.loads(line)
            records.append(StepRecord(int(raw["step"]), int(raw["generation"]), raw.get("loss"),
                                      int(raw.get("samples", 0)), float(raw.get("t", 0.0))))
        except (ValueError, KeyError, TypeError):
            continue
    return records


@dataclass
class History:
    """The final lineage of steps and what happened off it."""

    lineage: list[StepRecord] = field(default_factory=list)
    lost: list[StepRecord] = field(default_factory=list)
    gaps: list[tuple[int, int]] = field(default_factory=list)
    repeats: list[StepRecord] = field(default_factory=list)

    @property
    def steps(self) -> list[int]:
        return [r.step for r in self.lineage]

    @property
    def ok(self) -> bool:
        """Lineage is 1..N with no gap and no step applied twice within a generation."""
        return not self.gaps and not self.repeats and self.steps == list(
            range(1, len(self.lineage) + 1))


def build_history(records: list[StepRecord]) -> History:
    """Replay records generation by generation (file order within one generation).

    When generation g starts at step s, every lineage step >= s was re-executed: it moves to
    `lost`. Inside a generation steps must go up by one; a jump is a gap, a step that does not
    advance is a repeat.
    """
    history = History()
    ordered = sorted(records, key=lambda r: r.generation)  # stable: keeps file order
    for _, group in itertools.groupby(ordered, key=lambda r: r.generation):
        batch = list(group)
        while history.lineage and history.lineage[-1].step >= batch[0].step:
            history.lost.append(history.lineage.pop())
        for record in batch:
            _extend(history, record)
    history.lost.sort(key=lambda r: (r.generation, r.step))
    return history


def _extend(history: History, record: StepRecord) -> None:
    previous = history.lineage[-1].step if history.lineage else 0
    if record.step <= previous:
        history.repeats.append(record)
        return
    if record.step > previous + 1:
        history.gaps.append((previous + 1, record.step - 1))
    history.lineage.append(record)


def committed_history(ckpt_dir: Path | str) -> History:
    """The lineage recorded in `<ckpt_dir>/steps.jsonl` (see `build_history`)."""
    return build_history(read_records(Path(ckpt_dir) / STEPLOG_FILE))
