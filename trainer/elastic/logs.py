"""Structured logging: structlog when it imports, the standard library otherwise.

The library never configures logging itself (no import-time side effects); the application
decides where records go. `quiet_torchft` keeps what torchft and torch print about their own
machinery out of a job's output (a worker's output is the job's, in `coord logs`).
"""

from __future__ import annotations

import logging
import warnings
from typing import Any

from .peerloss import is_peer_loss

# torchft lines about its own machinery, not the job: on CPU torch has no NCCL flight recorder
# and every re-configuration says so.
_NOISE = ("Unable to reset NCCL flight recorder",)


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


class _TorchftFilter(logging.Filter):
    """Drops torchft's machinery lines, and its traceback of a peer loss that the trainer
    handles (and says in one line of its own, see InProcessContext's step_discarded)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if any(noise in record.getMessage() for noise in _NOISE):
            return False
        return not (record.exc_info and record.exc_info[1] is not None
                    and is_peer_loss(record.exc_info[1]))


def quiet_torchft(manager: Any) -> None:
    """Quiet a torchft Manager's lines about itself: its logger's noise, the access log of
    the server a healing peer fetches state from (`GET /checkpoint/N/full`), and torch's
    warning about the read-only buffers that state arrives in (torchft copies them)."""
    logger = logging.getLogger("torchft.manager")
    if not any(isinstance(f, _TorchftFilter) for f in logger.filters):
        logger.addFilter(_TorchftFilter())
    warnings.filterwarnings("ignore", message="The given buffer is not writable",
                            category=UserWarning, module=r"torch\.distributed\._serialization")
    server = getattr(getattr(manager, "_checkpoint_transport", None), "_server", None)
    if server is not None:
        server.RequestHandlerClass.log_request = _no_access_log


def _no_access_log(handler: Any, *args: Any) -> None:
    return None
