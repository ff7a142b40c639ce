"""The workload and cloud model: every timing and price the simulation uses.

Defaults, and where they come from:
- Recovery timings (worker cold start, in-process re-formation, joins) are the measured rows
  of `bench/recovery.py` in docs/benchmarks.md (2026-12-01 run: examples/elastic, 3 nodes,
  2 CPU cores). They are small because that model is small: measure your own job's. The
  graceful stop's teardown is bench/simulate_validate.py's calibration (the same job).
- Failure detection is coordd's default heartbeat timeout (a machine that dies silently is
  noticed when its heartbeats stop); the notice lead is AWS's two-minute spot warning.
- Step time, job length, checkpoint cost, boot time and prices are placeholders for a large
  job on GPU instances, not measurements: set yours (`--set key=value` or `--model FILE`).
"""

from __future__ import annotations

import math
import random
import tomllib
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from simulator.errors import SimulationInputError


class WorkloadModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    # The training job (placeholders: set yours).
    step_time_s: float = Field(1.0, gt=0, description="one training step at full size")
    steps_to_finish: int = Field(100_000, ge=1, description="steps the job needs at full size")
    scaling: Literal["samples", "steps"] = Field(
        "samples", description="samples: a job on fewer nodes makes proportionally less "
                               "progress per step (fixed per-replica batch); steps: a step is a "
                               "step at any size (examples/elastic: --steps N)")
    checkpoint_every_steps: int = Field(1000, ge=1, description="durable checkpoint interval")
    save_s: float = Field(5.0, ge=0, description="training pauses this long per checkpoint")
    restore_s: float = Field(10.0, ge=0, description="loading a checkpoint at a (re)start")
    # Recovery (bench/recovery.py, docs/benchmarks.md).
    worker_cold_start_s: float = Field(
        2.35, ge=0, description="restart mode: a new generation's workers up to their first "
                                "step (coord restart kill->next step 2.65 s less the 0.3 s "
                                "re-formation)")
    reform_s: float = Field(0.22, ge=0, description="in-process: survivors stall this long "
                                                    "when a replica vanishes (kill->next step)")
    join_cold_s: float = Field(2.01, ge=0, description="in-process: a new node's replica, from "
                                                       "its agent registering to training")
    join_warm_s: float = Field(0.34, ge=0, description="in-process: a spare's warm replica "
                                                       "taking a lost node's place")
    stop_s: float = Field(1.5, ge=0, description="a graceful stop: from the step boundary's "
                                               "commit written to every worker exited "
                                               "(bench/simulate_validate.py)")
    peer_fail_s: float = Field(0.1, ge=0, description="restart mode: peers' collectives fail "
                                                      "this long after a node dies")
    detect_s: float = Field(5.0, ge=0, description="a dead machine's stream is seen to drop "
                                                   "(coordd's heartbeat_timeout_s)")
    # The cloud (placeholders: set yours).
    boot_median_s: float = Field(90.0, ge=0, description="replacement launch to agent registered")
    boot_spread: float = Field(0.25, ge=0, description="lognormal sigma of the boot time")
    notice_lead_s: float = Field(120.0, ge=0, description="spot notice to termination (AWS: 2 min)")
    spot_price_per_hour: float = Field(12.0, ge=0, description="per node (illustrative: about "
                                                               "a third of on-demand)")
    on_demand_price_per_hour: float = Field(32.77, ge=0, description="per node (illustrative)")

    def boot_time(self, rng: random.Random) -> float:
        if self.boot_spread == 0:
            return self.boot_median_s
        return self.boot_median_s * math.exp(rng.gauss(0.0, self.boot_spread))

    def ideal_time_s(self) -> float:
        """Time to finish at full size with no failure (checkpoints included)."""
        saves = self.steps_to_finish // self.checkpoint_every_steps
        return self.steps_to_finish * self.step_time_s + saves * self.save_s


def _explain(exc: ValidationError, source: str) -> SimulationInputError:
    lines = [f"{source}: key '{'.'.join(map(str, e['loc']))}': {e['msg']}"
             for e in exc.errors(include_url=False)]
    return SimulationInputError("invalid workload model:\n  " + "\n  ".join(lines))


def parse_sets(values: list[str]) -> dict[str, str]:
    """`--set key=value` flags as a dict (the model converts and checks the values)."""
    out = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise SimulationInputError(f"--set {item!r}: give KEY=VALUE")
        out[key.strip()] = value.strip()
    return out


def load_model(path: Path | None = None, sets: list[str] = ()) -> WorkloadModel:
    """The defaults, then a TOML file's keys (top level or a [workload] table), then
    `--set` flags; an error names the file or flag and the key."""
    data: dict = {}
    if path is not None:
        try:
            raw = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except OSError as exc:
            raise SimulationInputError(f"{path}: cannot read: {exc.strerror or exc}") from None
        except ValueError as exc:
            raise SimulationInputError(f"{path}: not valid TOML: {exc}") from None
        data = raw.get("workload", raw)
        try:
            WorkloadModel.model_validate(data)
        except ValidationError as exc:
            raise _explain(exc, str(path)) from None
    flags = parse_sets(list(sets))
    try:
        return WorkloadModel.model_validate({**data, **flags})
    except ValidationError as exc:
        raise _explain(exc, "--set") from None
