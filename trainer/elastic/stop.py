"""The stop flag: set by SIGTERM (or by the script), acted on only at a step boundary.

A signal handler may run in the middle of a collective or an optimizer step, so it does
nothing but set a flag; the training loop then makes all ranks agree on the step to stop at.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterable
from types import FrameType
from typing import Any

from .logs import get_logger

log = get_logger(__name__)


class StopFlag:
    """A thread-safe flag plus the signal handlers that set it."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self.reason: str | None = None
        self._previous: dict[int, Any] = {}

    def set(self, reason: str = "requested") -> None:
        if not self._event.is_set():
            self.reason = reason
        self._event.set()

    def is_set(self) -> bool:
        return self._event.is_set()

    def install(self, signals: Iterable[int] = (signal.SIGTERM,)) -> None:
        """Route `signals` to this flag; only possible from the main thread."""
        if threading.current_thread() is not threading.main_thread():
            log.warning("stop_signals_not_installed", reason="not the main thread")
            return
        for sig in signals:
            self._previous[sig] = signal.signal(sig, self._handle)

    def uninstall(self) -> None:
        """Put back the handlers that were there before `install`."""
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous.clear()

    def _handle(self, signum: int, _frame: FrameType | None) -> None:
        self.set(signal.Signals(signum).name)
