"""The dashboard's job history from stored events and progress lines: re-formations of both
kinds with their recovery time and lost steps, and goodput; and that it is served over TLS
only."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from coordinator.dashboard import history
from coordinator.settings import CoorddSettings
from coordinator.store import EventRecord


def event(seq, time, kind, generation, **data):
    return EventRecord(seq, "j", time, kind, generation, kind, json.dumps(data))


def line(time, text):
    return (time, text)


EVENTS = [
    event(1, 100, "generation.started", 1, cause="start", old_members=[],
          new_members=["a", "b", "c"]),
    event(2, 140, "generation.started", 2, cause="node_lost", old_members=["a", "b", "c"],
          new_members=["a", "c"], took_s=8.0),
    event(3, 143, "training.resumed", 2, worker_generation=2, step=20),
    event(4, 160, "generation.reformed", 3, cause="node_joined", old_members=["a", "c"],
          new_members=["a", "c", "d"], added=["d"]),
]
LINES = [line(110, "step=10 loss=1.5 lr=0.1"), line(120, "step=20 loss=1.0 lr=0.1"),
         line(130, "step=30 loss=0.8 lr=0.1"), line(131, "[info] reformed step=99 x=1"),
         line(150, "step=30 loss=0.8 lr=0.1"), line(165, "step=40 loss=0.5 lr=0.1")]


def test_reformations_of_both_kinds_with_recovery_time_and_lost_steps():
    points = history.progress(LINES)
    assert [p.step for p in points] == [10, 20, 30, 30, 40]  # the [info] line is no progress
    restart, in_place = history.reformations(EVENTS, points)
    assert restart["kind"] == "restart" and restart["cause"] == "node_lost"
    assert restart["removed"] == ["b"] and restart["added"] == []
    assert restart["began"] == 132 and restart["recover_s"] == 18 and restart["steps_lost"] == 10
    assert in_place["kind"] == "in_place" and in_place["added"] == ["d"]
    assert in_place["recover_s"] == 5 and in_place["steps_lost"] == 0
    assert history.curves(points)["loss"][-1] == [165, 0.5]


def test_goodput_charges_each_reformation_its_recovery_and_redone_steps():
    points = history.progress(LINES)
    members = history.members_over_time(EVENTS, end=170)
    assert members == [[100, 3], [140, 2], [160, 3], [170, 3]]
    # held 40*3 + 20*2 + 10*3 = 190 node-s; wasted (18 + 10 steps * 1 s) * 2 + 5 * 3 = 71
    assert history.goodput(members, history.reformations(EVENTS, points), points) == \
        round(1 - 71 / 190, 4)


def test_the_dashboard_is_refused_without_tls_naming_the_setting():
    with pytest.raises(ValidationError, match="dashboard_listen"):
        CoorddSettings(dashboard_listen="127.0.0.1:0", insecure_plaintext=True)
