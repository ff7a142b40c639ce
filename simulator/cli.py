"""`coord simulate`: the command (coordinator/cli.py registers it and imports this lazily)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from contract.errors import InvalidSpec
from contract.spec import Overrides, load_job_file
from simulator import report, targets
from simulator.model import WorkloadModel, load_model
from simulator.run import POLICIES, horizon_s, simulate
from simulator.synth import PREFIX, SynthParams, generate, parse_params
from simulator.traces import Trace, dump_trace, load_trace

console = Console(highlight=False, width=120)
HELP = f"""What a job will cost and when it will finish on spot capacity, before you run it.

Replays JOB.toml (its nodes.count/min/spares, fault_tolerance.mode, max_restarts) through
coordd's real reconciler on a simulated clock, against a trace of failures and spot
capacity, and compares coord's policies with the usual alternatives on the same trace:

\b
{chr(10).join(f"  {name:24s} {text}" for name, text in POLICIES.items())}

TRACE is a file (a capacity trace {{"metadata": {{"gap_seconds": 300}}, "data": [...]}}, or
an event list, CSV or JSON) or `synthetic:KEY=VALUE,...` (keys: {', '.join(SynthParams.model_fields)}).

Examples:

\b
  coord simulate examples/elastic/job.toml --trace examples/traces/spot-synthetic.json
  coord simulate job.toml --trace synthetic:hard_per_node_hour=0.1 --nodes 1000 --set step_time_s=2.5
  coord simulate job.toml --trace synthetic --sweep hard_per_node_hour=0.001,0.01,0.1,1

Writes OUT/results.json, OUT/timeline.png (nodes training and progress against time) and,
with --sweep, OUT/sweep.png (goodput against the swept rate). docs/simulate.md explains
every figure and the workload model's defaults (`--set KEY=VALUE` or `--model FILE.toml`):
{', '.join(WorkloadModel.model_fields)}.
"""
app = typer.Typer(add_completion=False, rich_markup_mode=None,
                  context_settings={"help_option_names": ["-h", "--help"]})


def _trace(text: str, out: Path) -> Trace:
    if text.startswith(PREFIX):
        trace = generate(parse_params(text))
        dump_trace(trace, out / "trace.json")  # replay it later with --trace OUT/trace.json
        return trace
    return load_trace(text)


def _run(spec, model, trace, names, seed) -> list:
    horizon = horizon_s(model, trace)
    with Progress(TextColumn("{task.description:24s}"), BarColumn(),
                  TextColumn("{task.fields[sim]}"), TimeElapsedColumn(),
                  console=console, transient=True) as bar:
        tasks = {n: bar.add_task(n, total=horizon, sim="") for n in names}

        def tick(name: str, now: float) -> None:
            bar.update(tasks[name], completed=now, sim=f"simulated {now / 3600:.1f} h")
        return simulate(spec, model, trace, names, seed, tick)


def _sweep(spec, model, base: str, sweep: str, names, seed, out: Path) -> dict:
    key, _, values = sweep.partition("=")
    if key not in SynthParams.model_fields or not values:
        raise InvalidSpec(f"--sweep {sweep!r}: give KEY=V1,V2,... with KEY one of "
                          f"{', '.join(SynthParams.model_fields)}")
    base_params = parse_params(base if base.startswith(PREFIX) else PREFIX)
    points, goodput = [], {n: [] for n in names}
    for value in values.split(","):
        params = parse_params(",".join(f"{k}={v}" for k, v in
                                       {**base_params.model_dump(exclude_none=True),
                                        key: value}.items()), "--sweep")
        points.append(getattr(params, key))
        for r in _run(spec, model, generate(params), names, seed):
            goodput[r.policy].append(r.goodput)
    report.plot_sweep(out / "sweep.png", key, points, goodput)
    return {"key": key, "values": points, "goodput": goodput}


@app.command(help=HELP)
def simulate_cmd(
    job: Annotated[Path, typer.Argument(help="the job file (job.toml)")],
    trace: Annotated[str, typer.Option(help="trace file, or synthetic:KEY=VALUE,...")] = PREFIX,
    policy: Annotated[list[str], typer.Option(help="a policy to run (repeat; default: all)")] = [],  # noqa: B006
    out: Annotated[Path, typer.Option(help="where results.json and the plots go")] = Path(
        "simulate-out"),
    nodes: Annotated[int | None, typer.Option(help="override nodes.count")] = None,
    model: Annotated[Path | None, typer.Option(help="TOML file of workload model values")] = None,
    set_: Annotated[list[str], typer.Option("--set", help="KEY=VALUE of the workload model")] = [],  # noqa: B006
    sweep: Annotated[str | None, typer.Option(help="KEY=V1,V2,... of the synthetic trace: "
                                                   "goodput against it")] = None,
    check_targets: Annotated[bool, typer.Option("--targets", help="also check the 1,000-node "
                                                                  "targets (minutes)")] = False,
    seed: Annotated[int, typer.Option(help="seed of boot times and capacity preemptions")] = 0,
) -> None:
    try:
        spec = load_job_file(job, Overrides(nodes=nodes))
        workload = load_model(model, set_)
        out.mkdir(parents=True, exist_ok=True)
        names = policy or list(POLICIES)
        the_trace = _trace(trace, out)
        started = time.perf_counter()
        results = _run(spec, workload, the_trace, names, seed)
        wall = time.perf_counter() - started
        swept = _sweep(spec, workload, trace, sweep, names, seed, out) if sweep else None
    except InvalidSpec as exc:
        console.print(f"[red]coord simulate: {exc}[/red]")
        raise typer.Exit(2) from None
    report.print_table(console, results, f"{spec.name}: {spec.nodes.count} nodes, "
                       f"{len(the_trace.events)} trace events ({the_trace.source})")
    console.print(f"simulated in {wall:.1f} s of wall time")
    verdicts = [v for v in [targets.trace_target(results)] if v]
    if check_targets:
        verdicts += targets.scenario_targets(spec, workload)
    for verdict in verdicts:
        console.print(verdict.line())
    report.plot_timelines(out / "timeline.png", results, workload.steps_to_finish)
    report.write_json(out / "results.json", results, {
        "job": spec.name, "nodes": spec.nodes.count, "trace": the_trace.source,
        "model": workload.model_dump(), "wall_s": wall, "sweep": swept,
        "targets": [v.__dict__ for v in verdicts]})
    console.print(f"wrote {out / 'results.json'}, {out / 'timeline.png'}"
                  + (f", {out / 'sweep.png'}" if sweep else ""))


def main(args: list[str]) -> None:
    app(args, prog_name="coord simulate")
