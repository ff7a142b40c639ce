"""Process-tree helpers for nodes that are processes on this machine (the local provider).

A local node is one session: its agent is the session leader and every worker is a process
group inside it, so "the machine" is exactly the set of processes with that session id.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path


def session_pids(sid: int) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        if int(fields[3]) == sid:  # fields after the name: state, ppid, pgrp, session
            pids.append(int(entry.name))
    return pids


def signal_session(sid: int, sig: signal.Signals) -> int:
    """Send `sig` to every process of the session; returns how many were signalled."""
    count = 0
    for pid in session_pids(sid):
        try:
            os.kill(pid, sig)
            count += 1
        except ProcessLookupError:
            pass
    return count
