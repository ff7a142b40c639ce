"""Fault points a test can arm, to check what a crash at a given step leaves behind.

`COORD_FAULT_POINT=name` makes coordd SIGKILL itself the first time it reaches `name`;
`COORD_FAULT_POINT=name:raise` raises InjectedFault there instead (a bug in that code path).
Unset (always, outside tests) a fault point costs one dictionary lookup.
"""

from __future__ import annotations

import os
import signal

ENV = "COORD_FAULT_POINT"


class InjectedFault(RuntimeError):
    """Raised at an armed fault point (`name:raise`)."""


def fault_point(name: str) -> None:
    armed = os.environ.get(ENV)
    if not armed:
        return
    point, _, how = armed.partition(":")
    if point != name:
        return
    if how == "raise":
        raise InjectedFault(f"fault injected at {name} ({ENV})")
    os.kill(os.getpid(), signal.SIGKILL)
