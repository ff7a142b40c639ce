"""structlog set-up for trainer processes: one plain line per event on stdout.

coord ships worker output line by line, so lines must be self-contained and uncoloured. Only
the entry point calls `configure`; importing the recipe changes no global logging state.
"""

from __future__ import annotations

import logging
from typing import Any

import structlog


def configure(level: int = logging.INFO) -> None:
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="%H:%M:%S"),
            structlog.dev.ConsoleRenderer(colors=False, pad_event_to=0, sort_keys=False,
                                        exception_formatter=structlog.dev.plain_traceback),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        # sys.stdout as it is when a logger is made, not when this runs: a caller (a test
        # harness) may swap it, and a logger holding the old one would write to a closed file.
        logger_factory=structlog.PrintLoggerFactory(),
        cache_logger_on_first_use=False,
    )


def get_logger(name: str) -> Any:
    return structlog.get_logger(name)
