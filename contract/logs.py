"""structlog set-up for the agent (and whatever else logs outside coordd): readable on a
terminal, JSON otherwise. coordd's own set-up (coordinator/logs.py) uses the same chain."""

from __future__ import annotations

import logging
import sys

import structlog


def configure(level: str = "info", json: bool | None = None, stream=sys.stderr) -> None:
    """Configure structlog once per process. `json=None` picks JSON when `stream` is not a TTY."""
    use_json = not stream.isatty() if json is None else json
    renderer = (structlog.processors.JSONRenderer() if use_json
                else structlog.dev.ConsoleRenderer(colors=stream.isatty()))
    structlog.configure(
        processors=[*processors(), renderer],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=structlog.PrintLoggerFactory(file=stream),
        cache_logger_on_first_use=False,
    )


def processors() -> list:
    """What every entry carries, whichever way it is rendered."""
    return [structlog.contextvars.merge_contextvars, structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info]
