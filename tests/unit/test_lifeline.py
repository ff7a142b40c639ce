"""The lifeline between an agent and its workers (agent/lifeline.py, trainer/elastic/lifeline.py),
with real processes: a worker leaves the moment its agent's end closes, however the agent
ended, and receives what coordd tells it meanwhile."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time

import pytest

from agent.lifeline import Lifeline
from contract.exits import AGENT_LOST_EXIT

WORKER = textwrap.dedent("""
    import sys, time
    from trainer.elastic import lifeline
    lifeline.watch(lambda message: print(message, flush=True))
    print("watching", flush=True)
    time.sleep(60)  # a worker busy training: only the lifeline ends it
""")


def start_worker(line: Lifeline) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", WORKER], env={**line.env(), "PATH": ""},
                            pass_fds=(line.read_fd,), stdout=subprocess.PIPE, text=True,
                            cwd=sys.path[0] or None)
    line.spawned()
    assert proc.stdout.readline().strip() == "watching"
    return proc


@pytest.mark.timeout(30)
def test_a_worker_leaves_at_once_when_its_agents_end_closes():
    line = Lifeline()
    worker = start_worker(line)
    line.send("reformed", generation=3, dropped=["node-a_1"])
    assert worker.stdout.readline().strip() == \
        "{'kind': 'reformed', 'generation': 3, 'dropped': ['node-a_1']}"
    closed = time.monotonic()
    line.close()  # what the kernel does when the agent process dies, SIGKILL included
    assert worker.wait(10) == AGENT_LOST_EXIT
    assert time.monotonic() - closed < 2.0


@pytest.mark.timeout(30)
def test_a_worker_that_never_reads_never_blocks_its_agent():
    line = Lifeline()
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"],
                            pass_fds=(line.read_fd,))
    line.spawned()
    try:
        started = time.monotonic()
        for _ in range(20_000):  # far more than a pipe holds
            line.send("reformed", dropped=["x" * 40])
        assert time.monotonic() - started < 5.0
    finally:
        proc.kill()
        proc.wait()
        line.close()


def test_outside_coord_nothing_is_watched():
    from trainer.elastic import lifeline
    assert lifeline.watch(environ={}) is False


@pytest.mark.timeout(60)
def test_a_worker_whose_agent_hangs_leaves_after_the_silence():
    line = Lifeline()
    proc = subprocess.Popen(
        [sys.executable, "-c", "from trainer.elastic import lifeline; lifeline.SILENCE_S = 1.0\n"
         + WORKER.replace("from trainer.elastic import lifeline\n", "")],
        env={**line.env(), "PATH": ""}, pass_fds=(line.read_fd,), stdout=subprocess.PIPE,
        text=True, cwd=sys.path[0] or None)
    line.spawned()
    assert proc.stdout.readline().strip() == "watching"
    for _ in range(3):  # pings keep it
        line.send("ping")
        time.sleep(0.5)
    assert proc.poll() is None
    assert proc.wait(10) == AGENT_LOST_EXIT  # an agent that hangs sends nothing
    line.close()
