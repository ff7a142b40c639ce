"""Notices that this process was stopped (SIGSTOP, a frozen VM, a hung host).

A replica that did not run for a while may have been dropped from the membership meanwhile,
and its peers may have abandoned the step it was in (trainer/elastic/ftglue.py): their halves of
that collective are still pending, so when this replica wakes its collective can complete, for
it alone. It must not commit that step. A thread that ticks shows the pause: it could not run
either.
"""

from __future__ import annotations

import threading
import time

TICK_S = 0.1


class PauseDetector:
    """`paused_since(t)`: this process did not run for `threshold_s` or more after `t`."""

    def __init__(self, threshold_s: float) -> None:
        self._threshold_s = threshold_s
        self._last_tick = time.monotonic()
        self._pause_ended = float("-inf")
        threading.Thread(target=self._run, name="coord-pause-detector", daemon=True).start()

    def _run(self) -> None:
        while True:
            time.sleep(TICK_S)
            now = time.monotonic()
            if now - self._last_tick >= self._threshold_s:
                self._pause_ended = now
            self._last_tick = now

    def paused_since(self, since: float) -> bool:
        # The second test: woken, the caller may run before the ticker does.
        return (self._pause_ended > since
                or time.monotonic() - self._last_tick >= self._threshold_s)
