"""Run the chosen policies on one trace, each through its own simulated cloud fed the same
trace and seed."""

from __future__ import annotations

from collections.abc import Callable

from contract.spec import JobSpec
from coordinator.settings import CoorddSettings
from simulator.baselines import OnDemandOnly, StaticTorchrun, WholeClusterRelaunch
from simulator.coord import CoordRun
from simulator.errors import SimulationInputError
from simulator.model import WorkloadModel
from simulator.policy import PolicyRun, Result
from simulator.traces import Trace

POLICIES = {
    "coord-restart": "coord, restart mode: a node loss restarts the group from snapshots",
    "coord-inprocess": "coord, in-process: survivors re-form in place, a new node joins",
    "coord-inprocess-spares": "coord, in-process with spares: a booted idle node takes a "
                              "lost node's place",
    "torchrun": "static torchrun: fixed world size, any loss restarts all from the checkpoint",
    "relaunch": "whole-cluster relaunch on any preemption (SkyPilot managed jobs style)",
    "on-demand": "on-demand only: static torchrun on on-demand nodes (the cost baseline)",
}
COORD = ("coord-restart", "coord-inprocess", "coord-inprocess-spares")
Tick = Callable[[str, float], None]


def default_spares(spec: JobSpec) -> int:
    """The job file's spares, else one per hundred nodes (at least one)."""
    return spec.nodes.spares or min(64, max(1, spec.nodes.count // 100))


def _with_spares(spec: JobSpec, spares: int) -> JobSpec:
    return spec.model_copy(update={"nodes": spec.nodes.model_copy(update={"spares": spares})})


def make(name: str, spec: JobSpec, model: WorkloadModel, trace: Trace, seed: int,
         settings: CoorddSettings) -> PolicyRun:
    n = spec.nodes.count
    if name == "coord-restart":
        return CoordRun(name, _with_spares(spec, 0), "restart", model, trace, seed, settings)
    if name == "coord-inprocess":
        return CoordRun(name, _with_spares(spec, 0), "inprocess", model, trace, seed, settings)
    if name == "coord-inprocess-spares":
        return CoordRun(name, _with_spares(spec, default_spares(spec)), "inprocess", model,
                        trace, seed, settings)
    baseline = {"torchrun": StaticTorchrun, "relaunch": WholeClusterRelaunch,
                "on-demand": OnDemandOnly}.get(name)
    if baseline is None:
        raise SimulationInputError(f"--policy {name!r}: not one of {', '.join(POLICIES)}")
    run = baseline(model, trace, n, seed)
    run.name = name
    return run


def horizon_s(model: WorkloadModel, trace: Trace) -> float:
    """How long a policy may take before it counts as not finished."""
    return max(trace.end, 4 * model.ideal_time_s())


def effective_model(model: WorkloadModel, trace: Trace) -> WorkloadModel:
    """A synthetic trace may carry its own boot-time spread."""
    spread = (trace.meta.model_extra or {}).get("boot_spread")
    return model if spread is None else model.model_copy(update={"boot_spread": float(spread)})


def simulate(spec: JobSpec, model: WorkloadModel, trace: Trace, names: list[str], seed: int = 0,
             tick: Tick | None = None, settings: CoorddSettings | None = None) -> list[Result]:
    settings = settings or CoorddSettings()
    model = effective_model(model, trace)
    results = []
    for name in names:
        run = make(name, spec, model, trace, seed, settings)
        results.append(run.run(horizon_s(model, trace),
                               (lambda t, name=name: tick(name, t)) if tick else None))
    return results
