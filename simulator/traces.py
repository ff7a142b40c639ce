"""Traces: what the cloud does to the job, read from a file.

Three kinds (docs/simulate.md):
- capacity over time, the format public spot-availability data sets use:
  `{"metadata": {"gap_seconds": 300}, "data": [n0, n1, ...]}`: n_i spot nodes obtainable from
  i * gap_seconds on;
- an event list, CSV (header `time,kind,node,zone,count`) or JSON (`{"metadata": {...},
  "events": [{"time": 10, "kind": "spot_notice", "node": 3}, ...]}`), kinds spot_notice,
  hard_failure (for a node slot or a whole zone) and capacity (`count`);
- a seeded synthetic trace (simulator.synth), written as an event list.

A node slot is a place in the job: slot i holds the i-th node the job launched, and a
replacement takes the lost node's slot. Slot i lies in zone `z{i % zones}`.
"""

from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from simulator.errors import SimulationInputError

KINDS = ("spot_notice", "hard_failure", "capacity")


class TraceEvent(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    time: float = Field(ge=0, description="seconds from the job's submission")
    kind: Literal["spot_notice", "hard_failure", "capacity"]
    node: int | None = Field(None, ge=0, description="node slot")
    zone: str | None = Field(None, min_length=1, max_length=64)
    count: int | None = Field(None, ge=0, description="capacity: spot nodes obtainable")

    @model_validator(mode="after")
    def _target(self) -> TraceEvent:
        if self.kind == "capacity":
            if self.count is None:
                raise ValueError("a capacity event needs 'count'")
        elif (self.node is None) == (self.zone is None):
            raise ValueError(f"a {self.kind} event needs exactly one of 'node' or 'zone'")
        return self


class TraceMeta(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)  # generators record their settings

    zones: int = Field(1, ge=1, le=1000)
    gap_seconds: float | None = Field(None, gt=0)


@dataclasses.dataclass(frozen=True)
class Trace:
    source: str
    events: tuple[TraceEvent, ...]
    meta: TraceMeta = TraceMeta()

    @property
    def end(self) -> float:
        return self.events[-1].time if self.events else 0.0


def _bad(source: str, where: str, exc: ValidationError) -> SimulationInputError:
    lines = [f"{source}: {where}: field '{'.'.join(map(str, e['loc'])) or '(event)'}': "
             f"{e['msg']}" for e in exc.errors(include_url=False)]
    return SimulationInputError("invalid trace:\n  " + "\n  ".join(lines))


def _events(rows: list, source: str, where: str) -> list[TraceEvent]:
    events = []
    for index, row in enumerate(rows):
        try:
            events.append(TraceEvent.model_validate(row))
        except ValidationError as exc:
            raise _bad(source, where.format(index=index), exc) from None
    return sorted(events, key=lambda e: e.time)


def _meta(data: object, source: str) -> TraceMeta:
    try:
        return TraceMeta.model_validate(data if data is not None else {})
    except ValidationError as exc:
        raise _bad(source, "metadata", exc) from None


def _capacity(doc: dict, source: str) -> Trace:
    meta = _meta(doc.get("metadata"), source)
    if meta.gap_seconds is None:
        raise SimulationInputError(f"{source}: field 'metadata.gap_seconds': a capacity trace "
                                   "needs the seconds between its data points")
    data = doc["data"]
    if not isinstance(data, list):
        raise SimulationInputError(f"{source}: field 'data': expected a list of node counts")
    rows = [{"time": i * meta.gap_seconds, "kind": "capacity", "count": n}
            for i, n in enumerate(data)]
    return Trace(source, tuple(_events(rows, source, "field 'data', item {index}")), meta)


def _from_json(text: str, source: str) -> Trace:
    try:
        doc = json.loads(text)
    except ValueError as exc:
        raise SimulationInputError(f"{source}: not valid JSON: {exc}") from None
    if isinstance(doc, list):
        doc = {"events": doc}
    if not isinstance(doc, dict) or not ({"data", "events"} & doc.keys()):
        raise SimulationInputError(f"{source}: expected a capacity trace ('metadata' and "
                                   "'data') or an event list ('events')")
    unknown = set(doc) - {"metadata", "data", "events"}
    if unknown:
        raise SimulationInputError(f"{source}: unknown field '{sorted(unknown)[0]}'")
    if "data" in doc:
        return _capacity(doc, source)
    if not isinstance(doc["events"], list):
        raise SimulationInputError(f"{source}: field 'events': expected a list")
    meta = _meta(doc.get("metadata"), source)
    return Trace(source, tuple(_events(doc["events"], source, "event {index}")), meta)


def _from_csv(text: str, source: str) -> Trace:
    reader = csv.DictReader(text.splitlines())
    missing = {"time", "kind"} - set(reader.fieldnames or [])
    if missing:
        raise SimulationInputError(f"{source}: line 1: the header needs column(s) "
                                   f"{', '.join(sorted(missing))} (time,kind,node,zone,count)")
    rows, lines = [], []
    for row in reader:
        if None in row:
            raise SimulationInputError(f"{source}: line {reader.line_num}: more fields than "
                                       "the header names")
        rows.append({k: v for k, v in row.items() if v not in ("", None)})
        lines.append(reader.line_num)
    events = []
    for row, line in zip(rows, lines, strict=True):
        try:
            events.append(TraceEvent.model_validate(row, strict=False))
        except ValidationError as exc:
            raise _bad(source, f"line {line}", exc) from None
    return Trace(source, tuple(sorted(events, key=lambda e: e.time)), TraceMeta())


def load_trace(path: str | Path) -> Trace:
    """Read a trace file (by its suffix: .csv, else JSON); errors name the file and the
    field, event or line."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SimulationInputError(f"{path}: no such trace file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SimulationInputError(f"{path}: cannot read: {exc}") from None
    return _from_csv(text, str(path)) if path.suffix.lower() == ".csv" else \
        _from_json(text, str(path))


def dump_trace(trace: Trace, path: Path) -> None:
    events = [e.model_dump(exclude_none=True) for e in trace.events]
    path.write_text(json.dumps({"metadata": trace.meta.model_dump(exclude_none=True),
                                "events": events}, indent=None) + "\n")
