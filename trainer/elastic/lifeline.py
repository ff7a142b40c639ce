"""The worker's end of its lifeline to the agent (the agent's end: agent/lifeline.py).

The agent hands each worker the read end of a pipe only it can write to; its descriptor
number is in COORD_LIFELINE_FD. One thread reads it:

- end-of-file, or no ping for SILENCE_S: the agent is gone (killed, crashed) or hangs. coordd no longer counts this node, so a
  replica here must not take part in another step: the worker exits at once with
  AGENT_LOST_EXIT, from whatever it was doing. Exiting is the one stop that works at any
  moment (in a collective, waiting for a quorum, in the user's code), and it loses nothing:
  commits are atomic renames or single appends, and the peers' collectives fail at once on the
  closed connections, so they re-form (in-process) or restart (restart mode) without waiting
  for a timeout.
- a line of JSON from coordd (through the agent), handed to the context's handler: for
  example the replicas coordd dropped from the membership ({"kind": "reformed",
  "dropped": [...]}).

Outside coord (no COORD_LIFELINE_FD) nothing is watched.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import stat
import threading
from collections.abc import Callable, Mapping
from typing import Any

from contract.exits import AGENT_LOST_EXIT
from contract.workerenv import LIFELINE_FD

from .logs import get_logger

log = get_logger(__name__)
# The agent pings every second (agent/lifeline.py); this much silence is an agent that hangs,
# whose node coordd drops, not a busy one.
SILENCE_S = 10.0

Handler = Callable[[dict[str, Any]], None]
_handlers: dict[str, Handler] = {}
_lock = threading.Lock()
_watching = False


def watch(on_message: Handler | None = None, environ: Mapping[str, str] | None = None) -> bool:
    """Start reading the lifeline (once per process; a later call replaces the handler).
    True if this worker has one."""
    global _watching
    raw = (os.environ if environ is None else environ).get(LIFELINE_FD, "")
    if not raw:
        return False
    with _lock:
        _handlers["message"] = on_message or (lambda _msg: None)
        if _watching:
            return True
        fd = _pipe_fd(raw)
        if fd is None:
            return False
        _watching = True
    threading.Thread(target=_read, args=(fd,), name="coord-lifeline", daemon=True).start()
    return True


def _pipe_fd(raw: str) -> int | None:
    """The inherited read end, or None (and why, logged) if the variable names no pipe: a
    process that inherited the environment but not the descriptor must not read another file."""
    try:
        fd = int(raw)
        if stat.S_ISFIFO(os.fstat(fd).st_mode):
            return fd
    except (ValueError, OSError):
        pass
    log.warning("lifeline_unusable", variable=LIFELINE_FD, value=raw)
    return None


def _read(fd: int) -> None:
    pending = b""
    while select.select([fd], [], [], SILENCE_S)[0]:
        chunk = os.read(fd, 65536)
        if not chunk:
            agent_lost("is gone")
        *lines, pending = (pending + chunk).split(b"\n")
        for line in lines:
            _handle(line)
    agent_lost(f"sent nothing for {SILENCE_S:g} s")


def _handle(line: bytes) -> None:
    try:
        message = json.loads(line)
        if message.get("kind") != "ping":
            with _lock:
                handler = _handlers["message"]
            handler(message)
    except Exception as exc:  # a bad line or handler must not end the watch
        log.warning("lifeline_message_failed", error=repr(exc))


def agent_lost(how: str) -> None:
    """Leave now: this replica is outside the job's membership."""
    with contextlib.suppress(Exception):  # its output went to the agent: maybe nowhere now
        log.error("agent_lost", action=f"exiting with {AGENT_LOST_EXIT}: this worker's agent "
                                       f"{how}, so coord no longer counts it")
    os._exit(AGENT_LOST_EXIT)
