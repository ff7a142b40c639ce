"""The per-node cost of the reconciler's pure core, `decide` and `evolve` (issue 18).

    .venv/bin/python bench/decide_cost.py              # 10, 100, 1000, 4000 nodes per job
    .venv/bin/python bench/decide_cost.py --json out.json

One call is one reconciler turn as the runner makes it: the event(s) go through `evolve`,
`decide` asks for actions, and each action goes through `evolve`. Each typical event is timed
on a running job of N nodes (8 workers each), in both fault-tolerance modes. The cost must grow
no faster than linearly in N: the cost per node at the largest N may be at most
`--factor` times the cost per node at 100 nodes, measured in the same run.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from contract.states import JobState, NodeState  # noqa: E402
from coordinator.reconciler.decide import decide  # noqa: E402
from coordinator.reconciler.events import (Event, NodeChanged, NodesCreated,  # noqa: E402
                                           WorkerExited, WorkerExits)
from coordinator.reconciler.policy import timings  # noqa: E402
from coordinator.reconciler.reduce import evolve  # noqa: E402
from coordinator.reconciler.view import JobView, NodeView, WorkerExit  # noqa: E402

SIZES = (10, 100, 1000, 4000)
BASE = 100  # the size the largest one is compared with
NPROC = 8
NOW = 1000.0  # long after the generation started: no settle window holds a decision back
Turns = list[tuple[Event, ...]]  # each turn: the events heard, then one decide


def running_view(n: int, mode: str, members: int | None = None) -> JobView:
    """A job of target `n` running on its first `members` (default all) of n READY nodes."""
    members = n if members is None else members
    policy = timings(target=n, minimum=max(1, n // 2), max_restarts=100, wait_for_min_s=60,
                     nproc_per_node=NPROC, mode=mode)
    nodes = {f"n{i}": NodeView(f"n{i}", NodeState.ASSIGNED, "10.0.0.1", 29500, 1.0)
             for i in range(members)}
    ids = list(nodes)
    return JobView("j", JobState.RUNNING, 1, 0, policy, members=ids, nodes=nodes,
                   state_since=1.0, worker_generation=1,
                   slots={m: i for i, m in enumerate(ids)}, next_slot=len(ids))


def steady(n: int, mode: str) -> tuple[JobView, Turns]:
    """A turn with nothing heard (the runner's tick)."""
    return running_view(n, mode), [()]


def node_lost(n: int, mode: str) -> tuple[JobView, Turns]:
    view = running_view(n, mode)
    lost = dataclasses.replace(view.nodes[f"n{n // 2}"], state=NodeState.LOST)
    return view, [(NodeChanged(lost),)]


def node_joined(n: int, mode: str) -> tuple[JobView, Turns]:
    """A replacement registers for a job one node below its target."""
    view = dataclasses.replace(running_view(n, mode, members=n - 1), requested=1)
    node = NodeView("new", NodeState.READY, "10.0.0.2", 29500, 1.0)
    return view, [(NodesCreated((node,), 1),)]


def worker_exits(n: int, mode: str) -> tuple[JobView, Turns]:
    """Every rank exits 0 and the reports arrive together."""
    view = running_view(n, mode)
    exits = tuple(WorkerExited(1, WorkerExit(m, rank, 0, NOW - 1)) for m in view.members
                  for rank in view.ranks_of(m))
    return view, [(WorkerExits(exits),)]


def spot_notices(n: int, mode: str) -> tuple[JobView, Turns]:
    """50 nodes (at most half the job) announce they are leaving, each heard in its own turn."""
    view = running_view(n, mode)
    return view, [(NodeChanged(dataclasses.replace(view.nodes[m], state=NodeState.DRAINING)),)
                  for m in view.members[:min(50, n // 2)]]


SCENARIOS = {"steady turn": steady, "node lost": node_lost, "node joined": node_joined,
             "WorkerExits (all)": worker_exits, "50 spot notices": spot_notices}


def turn(view: JobView, turns: Turns, now: float = NOW) -> JobView:
    """What the runner does with `turns`, without its I/O."""
    for events in turns:
        for event in events:
            view = evolve(view, event, now)
        for action in decide(view, now):
            view = evolve(view, action, now)
    return view


def best_us(call: Callable[[], object], budget_s: float) -> float:
    """The fastest of several timed batches, in µs per call (the least disturbed by other
    load on the machine)."""
    start = time.perf_counter()
    call()
    once = max(time.perf_counter() - start, 1e-6)
    loops = max(1, int(budget_s / 5 / once))
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(loops):
            call()
        best = min(best, (time.perf_counter() - start) / loops)
    return best * 1e6


def measure(sizes: tuple[int, ...], budget_s: float) -> list[dict]:
    rows = []
    for mode in ("restart", "inprocess"):
        for name, scenario in SCENARIOS.items():
            row: dict = {"event": name, "mode": mode, "us_per_call": {}, "us_per_node": {}}
            for n in sizes:
                view, turns = scenario(n, mode)
                us = best_us(lambda: turn(view, turns), budget_s)  # noqa: B023
                row["us_per_call"][n], row["us_per_node"][n] = us, us / n
            rows.append(row)
    return rows


def judge(rows: list[dict], sizes: tuple[int, ...], factor: float) -> None:
    big = max(sizes)
    for row in rows:
        per_node = row["us_per_node"]
        row["growth"] = per_node[big] / per_node[BASE]
        row["linear"] = row["growth"] <= factor


def table(rows: list[dict], sizes: tuple[int, ...], factor: float) -> str:
    big = max(sizes)
    head = (f"{'event':<22}{'mode':<11}" + "".join(f"{f'{n} nodes':>16}" for n in sizes)
            + f"{f'{big}/{BASE} per node':>20}  linear (≤ {factor:g}×)")
    lines = [head, f"{'':<33}" + "".join(f"{'µs/call µs/node':>16}" for _ in sizes)]
    for row in rows:
        cells = "".join(f"{row['us_per_call'][n]:>9.0f} {row['us_per_node'][n]:>6.2f}"
                        for n in sizes)
        verdict = "met" if row["linear"] else "NOT MET"
        lines.append(f"{row['event']:<22}{row['mode']:<11}{cells}{row['growth']:>19.2f}×  "
                     f"{verdict}")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default=",".join(map(str, SIZES)),
                        help="nodes per job, comma-separated (must include 100)")
    parser.add_argument("--factor", type=float, default=2.0,
                        help="most the cost per node may grow from 100 nodes to the largest")
    parser.add_argument("--budget-s", type=float, default=0.3,
                        help="time spent on each figure")
    parser.add_argument("--json", type=Path, help="write every figure here")
    args = parser.parse_args()
    sizes = tuple(sorted({int(s) for s in args.sizes.split(",")}))
    if BASE not in sizes or len(sizes) < 2:
        parser.error(f"--sizes must include {BASE} and a larger size")
    rows = measure(sizes, args.budget_s)
    judge(rows, sizes, args.factor)
    print(table(rows, sizes, args.factor))
    met = all(row["linear"] for row in rows)
    print(f"\ngrows no faster than linearly: {'met' if met else 'NOT MET'}")
    if args.json:
        args.json.write_text(json.dumps({
            "python": platform.python_version(), "machine": platform.machine(),
            "factor": args.factor, "met": met, "rows": rows}, indent=2))
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
