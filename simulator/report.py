"""What a simulation prints and writes: the table, results.json and the PNG plots."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from rich.console import Console
from rich.table import Table

from simulator.policy import Result

PLOT_POINTS = 2000  # per line: enough for a smooth curve, small files


def _hours(seconds: float | None) -> str:
    return "not finished" if seconds is None else f"{seconds / 3600:.2f} h"


def table(results: list[Result], title: str) -> Table:
    t = Table(title=title)
    for column in ("policy", "goodput", "time to finish", "node-hours", "cost",
                   "steps lost", "re-formations", "longest stall"):
        t.add_column(column, justify="left" if column == "policy" else "right")
    for r in results:
        t.add_row(r.policy, f"{r.goodput:.1%}", _hours(r.time_to_finish_s),
                  f"{r.node_hours:,.1f}", f"${r.cost:,.0f}", f"{r.steps_lost:,}",
                  f"{r.reformations:,}", f"{r.longest_stall_s:,.1f} s")
    return t


def thin(timeline: list, points: int = PLOT_POINTS) -> list:
    if len(timeline) <= points:
        return timeline
    stride = len(timeline) / points
    return [timeline[int(i * stride)] for i in range(points)] + [timeline[-1]]


def to_json(results: list[Result], extra: dict) -> dict:
    rows = []
    for r in results:
        row = dataclasses.asdict(r)
        row["timeline"] = [list(p) for p in thin(r.timeline)]
        rows.append(row)
    return {**extra, "results": rows}


def write_json(path: Path, results: list[Result], extra: dict) -> None:
    path.write_text(json.dumps(to_json(results, extra), indent=1) + "\n")


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt
    return plt


def plot_timelines(path: Path, results: list[Result], steps_to_finish: int) -> None:
    plt = _pyplot()
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(10, 7), sharex=True)
    for r in results:
        points = thin(r.timeline)
        hours = [p[0] / 3600 for p in points]
        top.step(hours, [p[1] for p in points], where="post", label=r.policy, linewidth=1)
        bottom.plot(hours, [100 * p[2] / steps_to_finish for p in points], label=r.policy)
    top.set_ylabel("nodes training")
    bottom.set_ylabel("progress (% of the job)")
    bottom.set_xlabel("time (h)")
    top.legend(fontsize="small", loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_sweep(path: Path, key: str, values: list[float], goodput: dict[str, list[float]]) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 5))
    for policy, series in goodput.items():
        ax.plot(values, [100 * g for g in series], marker="o", label=policy)
    ax.set_xscale("log")
    ax.set_xlabel(key)
    ax.set_ylabel("goodput (%)")
    ax.set_ylim(0, 100)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def print_table(console: Console, results: list[Result], title: str) -> None:
    console.print(table(results, title))
