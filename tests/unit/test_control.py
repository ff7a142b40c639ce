"""Control lines (`::coord::KIND JSON` on a worker's stdout) and the in-process choice."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from contract import control
from trainer.elastic import inprocess


def test_a_control_line_becomes_a_worker_event_with_the_rank_added(capsys):
    control.emit("inprocess", replica=4)
    line = capsys.readouterr().out.rstrip("\n")
    assert control.parse(line, rank=4) == ("worker.inprocess", {"replica": 4, "rank": 4})


# A checkpoint writer thread emits while another thread writes lines of its own; a tiny
# switch interval makes the threads interleave between any two writes.
INTERLEAVED = textwrap.dedent("""
    import sys, threading
    from contract import control
    sys.setswitchinterval(1e-6)
    def other():
        for _ in range(5000):
            sys.stdout.write("x" * 20 + "\\n")
    def checkpoints():
        for step in range(5000):
            control.emit("checkpoint", step=step)
    threads = [threading.Thread(target=f) for f in (other, checkpoints)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
""")


def test_a_control_line_from_a_thread_is_never_garbled_by_another_threads_output():
    out = subprocess.run([sys.executable, "-c", INTERLEAVED], capture_output=True, text=True,
                         timeout=60, check=True).stdout
    steps = [control.parse(line, rank=0) for line in out.splitlines() if "::coord::" in line]
    assert steps == [("worker.checkpoint", {"step": n, "rank": 0}) for n in range(5000)]


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
