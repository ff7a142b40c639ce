"""Structured logging: structlog when it imports, the standard library otherwise.

The library never configures logging itself (no import-time side effects); the application
decides where records go.
"""

from __future__ import annotations

import logging
from typing import Any


class _StdlibAdapter:
    """Accepts structlog-style `log.info("event", key=value)` calls on a stdlib logger."""

    def __init__(self, logger: logging.Logger, context: dict[str, Any] | None = None) -> None:
        self._logger = logger
        self._context = dict(context or {})

    def bind(self, **kw: Any) -> _StdlibAdapter:
        return _StdlibAdapter(self._logger, {**self._context, **kw})

    def _emit(self, level: int, event: str, **kw: Any) -> None:
        fields = " ".join(f"{k}={v!r}" for k, v in {**self._context, **kw}.items())
        self._logger.log(level, "%s %s", event, fields)

    def debug(self, event: str, **kw: Any) -> None:
        self._emit(logging.DEBUG, event, **kw)

    def info(self, event: str, **kw: Any) -> None:
        self._emit(logging.INFO, event, **kw)

    def warning(self, event: str, **kw: Any) -> None:
        self._emit(logging.WARNING, event, **kw)

    def error(self, event: str, **kw: Any) -> None:
        self._emit(logging.ERROR, event, **kw)


def get_logger(name: str) -> Any:
    """Return a logger that takes an event name plus key/value fields."""
    try:
        import structlog
    except ImportError:  # pragma: no cover - structlog is a project dependency
        return _StdlibAdapter(logging.getLogger(name))
    return structlog.get_logger(name)
