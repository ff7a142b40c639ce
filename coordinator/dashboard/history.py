"""A job's life through failures, derived from its event log and the progress lines its
trainer prints: the re-formations, nodes-in-job and steps over time, goodput, steps per second.

Everything here is a pure function of stored data, so the page, a test and a restarted coordd
all see the same history.
"""

from __future__ import annotations

import dataclasses
import re
import statistics
from typing import Any

from contract import events as ev
from coordinator.store import EventRecord

# `step=120 loss=0.53 lr=0.02`: a progress line starts with its step; every other numeric
# key=value on it is a curve. (Log lines that mention a step elsewhere are not progress.)
STEP_RE = re.compile(r"^step=(\d+)(?=\s|$)")
PAIR_RE = re.compile(r"(?:^|\s)([A-Za-z_][A-Za-z0-9_/.-]{0,40})=(-?[0-9.]+(?:[eE][-+]?\d+)?)"
                     r"(?=\s|$)")
NOT_CURVES = {"step", "gen", "generation", "world", "rank"}
RATE_POINTS = 10  # steps/s over the newest this many progress lines


@dataclasses.dataclass(frozen=True)
class Point:
    """One progress line: a step reached at a time, with the values printed beside it."""
    time: float
    step: int
    values: dict[str, float]


def progress(lines: list[tuple[float, str]]) -> list[Point]:
    """The progress lines among (time, text) `lines` (`step=N key=value ...`), oldest first."""
    points = []
    for when, line in lines:
        if not (match := STEP_RE.match(line)):
            continue
        values = {}
        for key, text in PAIR_RE.findall(line):
            if key not in NOT_CURVES:
                try:
                    values[key] = float(text)
                except ValueError:
                    continue
        points.append(Point(when, int(match.group(1)), values))
    return sorted(points, key=lambda p: p.time)


def reformations(events: list[EventRecord], points: list[Point]) -> list[dict[str, Any]]:
    """Every re-formation after the first start, oldest first: in place (survivors kept their
    processes) or restart (every worker restarted), with its cause, the membership before and
    after, when recovery began, how long until the job made progress again, and the steps
    lost. The one place that reads the generation events: a rename of them changes this only.
    """
    decoded = _decoded(events)
    # the step a restart-path generation's workers resumed from
    resumed = {e.data.worker_generation: e.data.step for e in decoded
               if e.kind == ev.TRAINING_RESUMED and isinstance(e.data, ev.StepReport)}
    result = []
    for event in decoded:
        data = event.data
        if not isinstance(data, (ev.GenerationStarted, ev.GenerationReformed)) or \
                data.cause == "start":
            continue
        in_place = isinstance(data, ev.GenerationReformed)
        began = event.time - (0.0 if in_place else data.took_s)
        before = [p for p in points if p.time <= began]
        after = next((p for p in points if p.time > event.time), None)
        old, new = list(data.old_members), list(data.new_members)
        lost = 0 if in_place else _steps_lost(before, resumed.get(event.generation), after)
        result.append({
            "generation": event.generation, "kind": "in_place" if in_place else "restart",
            "cause": data.cause, "time": event.time, "began": began,
            "old_members": old, "new_members": new,
            "removed": [n for n in old if n not in new], "added": [n for n in new if n not in old],
            "recover_s": round(after.time - began, 3) if after else None,
            "recovered_at": after.time if after else None, "steps_lost": lost,
            "message": event.message})
    return result


def _steps_lost(before: list[Point], resumed_from: int | None, after: Point | None) -> int | None:
    if not before:
        return 0
    restart_step = resumed_from if resumed_from is not None else (after.step if after else None)
    return None if restart_step is None else max(0, before[-1].step - restart_step)


def members_over_time(events: list[EventRecord], end: float) -> list[list[float]]:
    """[time, nodes in the job] at every membership change, and at `end`."""
    series: list[list[float]] = []
    for event in _decoded(events):
        if isinstance(event.data, (ev.GenerationStarted, ev.GenerationReformed)):
            series.append([event.time, len(event.data.new_members)])
    if series:
        series.append([end, series[-1][1]])
    return series


def steps_per_s(points: list[Point]) -> float | None:
    recent = points[-RATE_POINTS:]
    if len(recent) < 2 or recent[-1].time <= recent[0].time:
        return None
    return round((recent[-1].step - recent[0].step) / (recent[-1].time - recent[0].time), 3)


def goodput(members: list[list[float]], history: list[dict[str, Any]],
            points: list[Point]) -> float | None:
    """The share of node-time held that produced committed steps: node-time minus, for each
    re-formation, the nodes' time spent recovering and redoing the steps it lost."""
    held = sum((t1 - t0) * n for (t0, n), (t1, _) in zip(members, members[1:]))
    if held <= 0:
        return None
    pairs = [(a, b) for a, b in zip(points, points[1:]) if b.step > a.step]
    per_step = statistics.median((b.time - a.time) / (b.step - a.step)
                                 for a, b in pairs) if pairs else 0.0
    wasted = sum(((r["recover_s"] or 0.0) + (r["steps_lost"] or 0) * per_step)
                 * len(r["new_members"]) for r in history)
    return round(max(0.0, min(1.0, 1 - wasted / held)), 4)


def curves(points: list[Point]) -> dict[str, list[list[float]]]:
    """Each value the trainer prints beside its step (loss, lr, images/s, ...): [[t, v]]."""
    result: dict[str, list[list[float]]] = {}
    for point in points:
        for key, value in point.values.items():
            result.setdefault(key, []).append([point.time, value])
    return result


@dataclasses.dataclass(frozen=True)
class _Event:
    kind: str
    time: float
    generation: int
    message: str
    data: ev.Payload | ev.Unknown  # a row that cannot be read counts as no re-formation


def _decoded(events: list[EventRecord]) -> list[_Event]:
    return [_Event(e.kind, e.time, e.generation, e.message, ev.parse(e.kind, e.data_json))
            for e in events]
