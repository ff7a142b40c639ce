"""Process-tree helpers for nodes that are processes on this machine (the local provider).

A local node is one session: its agent is the session leader and every worker is a process
group inside it, so "the machine" is exactly the set of processes with that session id.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path


def _stats() -> dict[int, tuple[int, int]]:
    """pid -> (parent pid, session id) for every process."""
    stats = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()  # after the name: state, ppid, pgrp, sid
        stats[int(entry.name)] = (int(fields[1]), int(fields[3]))
    return stats


def process_alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie does not: it has exited, only its parent has not reaped it)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2:].split()[0] != "Z"


def session_pids(sid: int) -> list[int]:
    return [pid for pid, (_, session) in _stats().items() if session == sid]


def tree_pids(root: int) -> list[int]:
    """`root`, its session, and every descendant, even those that started sessions of their
    own (torchrun's workers do)."""
    stats = _stats()
    chosen = {pid for pid, (_, session) in stats.items() if session == root} | {root}
    grew = True
    while grew:
        more = {pid for pid, (ppid, _) in stats.items() if ppid in chosen} - chosen
        chosen |= more
        grew = bool(more)
    return sorted(p for p in chosen if p in stats)


def signal_session(sid: int, sig: signal.Signals) -> int:
    """Send `sig` to every process of the session; returns how many were signalled."""
    return _signal_all(session_pids(sid), sig)


def signal_tree(root: int, sig: signal.Signals) -> int:
    return _signal_all(tree_pids(root), sig)


def _signal_all(pids: list[int], sig: signal.Signals) -> int:
    count = 0
    for pid in pids:
        try:
            os.kill(pid, sig)
            count += 1
        except ProcessLookupError:
            pass
    return count
