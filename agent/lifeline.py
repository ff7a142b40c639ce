"""A worker's lifeline: one pipe from the agent to each worker it starts.

The worker inherits the pipe's read end (its descriptor number is in COORD_LIFELINE_FD); only
the agent holds the write end. Two things travel on it:

- the agent's death: when the agent process ends, however it ends (SIGKILL, a crash), the
  kernel closes the write end and the worker reads end-of-file at once. A replica whose agent
  is gone is outside the job's membership (coordd drops that node), so the trainer library
  stops taking part in steps the moment it reads EOF, instead of training on as a replica
  nobody counts until a timeout ends it. Nothing else on a node learns of the agent's death
  as fast or as surely: no heartbeat to tune, no polling, and no way for a stale process to
  miss it.
- the agent's liveness: it writes a ping every PING_S, so a worker whose agent hangs (a frozen
  or stuck agent: coordd drops the node) leaves too, after a silence of several pings;
- messages from coordd about the running replicas (one JSON object a line), such as which
  replicas coordd dropped from the membership: the library refuses to count them and stops
  waiting on them at once (see trainer/elastic/lifeline.py).

The write end is non-blocking: a worker that never reads (a plain script) can never block
the agent; what does not fit in the pipe is dropped.
"""

from __future__ import annotations

import contextlib
import json
import os
from typing import Any

import structlog

from contract.workerenv import LIFELINE_FD

log = structlog.get_logger("agent.lifeline")
PING_S = 1.0  # the worker side (trainer/elastic/lifeline.py) allows a silence of several


class Lifeline:
    """The agent's end of one worker's lifeline."""

    def __init__(self) -> None:
        self.read_fd, self._write_fd = os.pipe()  # neither is inherited unless passed
        os.set_blocking(self._write_fd, False)
        self._fd_in_worker = self.read_fd  # pass_fds keeps the number in the child

    def env(self) -> dict[str, str]:
        return {LIFELINE_FD: str(self._fd_in_worker)}

    def spawned(self) -> None:
        """The worker holds its copy of the read end now: the agent's goes."""
        if self.read_fd >= 0:
            os.close(self.read_fd)
            self.read_fd = -1

    def send(self, kind: str, **data: Any) -> None:
        line = json.dumps({"kind": kind, **data}).encode() + b"\n"
        try:
            os.write(self._write_fd, line)
        except BlockingIOError:  # a worker that does not read: nothing waits for it
            pass
        except OSError as exc:
            log.info("lifeline.not_sent", kind=kind, error=str(exc))

    def close(self) -> None:
        self.spawned()
        if self._write_fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self._write_fd)
            self._write_fd = -1
