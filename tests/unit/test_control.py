"""Control lines (`::coord::KIND JSON` on a worker's stdout) and the in-process choice."""

from __future__ import annotations

import pytest

from agent import control
from trainer.elastic import inprocess


def test_a_control_line_becomes_a_worker_event_with_the_rank_added(capsys):
    control.emit("inprocess", replica=4)
    line = capsys.readouterr().out.rstrip("\n")
    assert control.parse(line, rank=4) == ("worker.inprocess", {"replica": 4, "rank": 4})


@pytest.mark.parametrize("text", [
    "step=10 loss=0.3",                      # an ordinary log line
    "::coord::inprocess {not json",          # broken JSON
    "::coord::inprocess [1, 2]",             # not an object
    "::coord::in process {}",                # not a kind
    "::coord::inprocess " + "x" * 5000,      # too long to be a control line
])
def test_anything_else_stays_a_log_line(text):
    assert control.parse(text, rank=0) is None


@pytest.mark.parametrize("env, chosen", [
    ({"COORD_FT_MODE": "inprocess"}, True),
    ({"COORD_FT_MODE": "auto", "TORCHFT_LIGHTHOUSE": "http://127.0.0.1:1"}, True),
    ({"COORD_FT_MODE": "auto"}, False),      # coordd offered no quorum service
    ({"COORD_FT_MODE": "restart"}, False),
    ({}, False),                             # run by hand
])
def test_a_script_takes_the_in_process_path_only_when_coord_offers_it(env, chosen):
    pytest.importorskip("torchft")
    assert inprocess.selected(env) is chosen
