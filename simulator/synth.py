"""A seeded synthetic trace: independent node failures and spot preemptions, zone-wide
preemption bursts and capacity droughts, written as an event list.

`--trace synthetic:KEY=VALUE,...` (keys: SynthParams' fields) generates one in memory; the
same seed gives the same trace. `python -m simulator.synth OUT.json [KEY=VALUE ...]` writes
one to a file.
"""

from __future__ import annotations

import random
import sys
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from simulator.errors import SimulationInputError
from simulator.traces import Trace, TraceEvent, TraceMeta, dump_trace

PREFIX = "synthetic"


class SynthParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    slots: int = Field(1100, ge=1, le=100_000, description="node slots events may hit (the "
                                                           "job's nodes and its spares)")
    hours: float = Field(336.0, gt=0, description="trace length (two weeks)")
    hard_per_node_hour: float = Field(0.01, ge=0, description="hard failures per node-hour")
    spot_per_node_hour: float = Field(0.01, ge=0, description="spot notices per node-hour")
    zones: int = Field(4, ge=1, le=1000)
    bursts_per_day: float = Field(0.5, ge=0, description="zone-wide preemption bursts")
    droughts_per_day: float = Field(0.25, ge=0, description="capacity droughts")
    drought_hours: float = Field(2.0, gt=0)
    drought_capacity: float = Field(0.9, ge=0, le=1, description="share of the slots "
                                                                 "obtainable during a drought")
    boot_spread: float | None = Field(None, ge=0, description="lognormal sigma of boot times "
                                                              "(overrides the model's)")
    seed: int = 1


def _poisson(rng: random.Random, rate_per_s: float, end: float) -> list[float]:
    times, t = [], 0.0
    if rate_per_s <= 0:
        return times
    while True:
        t += rng.expovariate(rate_per_s)
        if t >= end:
            return times
        times.append(t)


def generate(p: SynthParams) -> Trace:
    rng, end = random.Random(p.seed), p.hours * 3600
    rows: list[dict] = []
    for kind, rate in (("hard_failure", p.hard_per_node_hour), ("spot_notice",
                                                                 p.spot_per_node_hour)):
        rows += [{"time": t, "kind": kind, "node": rng.randrange(p.slots)}
                 for t in _poisson(rng, rate * p.slots / 3600, end)]
    rows += [{"time": t, "kind": "spot_notice", "zone": f"z{rng.randrange(p.zones)}"}
             for t in _poisson(rng, p.bursts_per_day / 86400, end)]
    for t in _poisson(rng, p.droughts_per_day / 86400, end):
        rows.append({"time": t, "kind": "capacity", "count": int(p.slots * p.drought_capacity)})
        rows.append({"time": min(t + p.drought_hours * 3600, end), "kind": "capacity",
                     "count": p.slots})
    events = tuple(sorted((TraceEvent(**r) for r in rows), key=lambda e: e.time))
    meta = TraceMeta(zones=p.zones, generator=p.model_dump(exclude_none=True),
                     **({"boot_spread": p.boot_spread} if p.boot_spread is not None else {}))
    return Trace(f"{PREFIX}:seed={p.seed}", events, meta)


def parse_params(text: str, source: str = "--trace") -> SynthParams:
    """`synthetic:KEY=VALUE,...` (or KEY=VALUE items) as SynthParams; errors name the key."""
    body = text.removeprefix(PREFIX).removeprefix(":")
    data = {}
    for item in filter(None, (part.strip() for part in body.split(","))):
        key, sep, value = item.partition("=")
        if not sep:
            raise SimulationInputError(f"{source} {text!r}: {item!r} is not KEY=VALUE")
        data[key.strip()] = value.strip()
    try:
        return SynthParams.model_validate(data)
    except ValidationError as exc:
        lines = [f"{source}: key '{'.'.join(map(str, e['loc']))}': {e['msg']}"
                 for e in exc.errors(include_url=False)]
        raise SimulationInputError("invalid synthetic trace:\n  " + "\n  ".join(lines)) from None


def main(argv: list[str]) -> None:
    if not argv:
        sys.exit(f"usage: python -m simulator.synth OUT.json [KEY=VALUE ...]\nkeys: "
                 f"{', '.join(SynthParams.model_fields)}")
    trace = generate(parse_params(",".join(argv[1:])))
    dump_trace(trace, Path(argv[0]))
    print(f"{argv[0]}: {len(trace.events)} events over {trace.end / 3600:.1f} h")


if __name__ == "__main__":
    main(sys.argv[1:])
