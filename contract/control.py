"""Control lines: how a worker tells coord something without a channel of its own.

A worker prints one line `::coord::KIND JSON` on its standard output (the idea of GitHub
Actions' workflow commands); the agent takes it out of the log stream and sends it to coordd as
an AgentEvent of kind `worker.KIND`, with the worker's rank added to the JSON. Known kinds:

    inprocess   this worker joined the job's quorum service as an in-process replica and
                committed its first step
    finished    this in-process replica trained to the last step (the job's training is done)
    checkpoint  {"step": N}: a durable checkpoint of step N is committed where the job's
                workers restore from (coordd then knows the job can resume after a stop)
    restored    {"step": N}: this start resumes from the checkpoint of step N (0: fresh)
"""

from __future__ import annotations

import json
import sys
import threading
from typing import Any

PREFIX = "::coord::"
WORKER_INPROCESS = "worker.inprocess"
WORKER_FINISHED = "worker.finished"
WORKER_CHECKPOINT = "worker.checkpoint"
WORKER_RESTORED = "worker.restored"
_MAX_LINE = 4096  # a control line is short; a longer one is an ordinary log line
# Workers emit from several threads (a checkpoint writer beside the training loop).
_WRITE = threading.Lock()


def emit(kind: str, **data: Any) -> None:
    """Worker side: say `kind` to coord, through the agent that reads this stdout. The line
    and its newline go in one write (print() makes two, and another thread's output could
    land between them and garble the line)."""
    line = f"{PREFIX}{kind} {json.dumps(data)}\n"
    with _WRITE:
        sys.stdout.write(line)
        sys.stdout.flush()


def parse(text: str, rank: int) -> tuple[str, dict[str, Any]] | None:
    """Agent side: (event kind, data) when `text` is a control line, else None."""
    if not text.startswith(PREFIX) or len(text) > _MAX_LINE:
        return None
    kind, _, body = text[len(PREFIX):].partition(" ")
    try:
        data = json.loads(body) if body.strip() else {}
    except ValueError:
        return None
    if not kind.isidentifier() or not isinstance(data, dict):
        return None
    return f"worker.{kind}", {**data, "rank": rank}
