"""A reconciler turn costs in proportion to the job's nodes (bench/decide_cost.py measures it)."""

from __future__ import annotations

import sys
import time

import pytest

from bench.decide_cost import SCENARIOS, turn

SMALL, LARGE = 100, 2000


def steps(view, turns) -> int:
    """Lines of Python a turn runs (each pass of a loop or comprehension counts): a count,
    not a clock."""
    count = 0

    def trace(frame, event, arg):
        nonlocal count
        count += 1
        return trace

    sys.settrace(trace)
    try:
        turn(view, turns)
    finally:
        sys.settrace(None)
    return count


def fastest_s(view, turns) -> float:
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        turn(view, turns)
        best = min(best, time.perf_counter() - start)
    return best


@pytest.mark.parametrize("mode", ["restart", "inprocess"])
@pytest.mark.parametrize("name", list(SCENARIOS))
def test_a_turn_grows_no_faster_than_the_job(name: str, mode: str):
    small, large = SCENARIOS[name](SMALL, mode), SCENARIOS[name](LARGE, mode)
    # Work per node in lines of Python: a walk over every node made once per node would
    # multiply this by the job's size.
    assert steps(*large) / LARGE <= 1.5 * steps(*small) / SMALL
    # A scan hidden in a builtin (`x in list`, `list.index`) per node shows only in time:
    # the generous factor keeps a loaded machine from failing it.
    assert fastest_s(*large) / LARGE <= 5 * fastest_s(*small) / SMALL
