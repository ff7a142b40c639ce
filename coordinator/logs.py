"""coordd's structlog set-up: every entry to its log file, and what the terminal shows
(the processor chain is contract/logs.py's, shared with the agent)."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import structlog

from contract.logs import processors

TERMINAL_FORMATS = ("plain", "console", "json")


def configure_daemon(level: str, log_file: Path, terminal: str = "plain",
                     stream=sys.stderr) -> None:
    """coordd: every entry as one JSON line to `log_file` (Python's own logging, asyncio's
    and grpc's, too); on the terminal `plain` shows warnings and errors as one plain line
    each, `console` every entry readably, `json` every entry as in the file."""
    file = open(log_file, "a", buffering=1, encoding="utf-8")  # noqa: SIM115 (process-long)
    sink = _DaemonSink(file, terminal, stream)
    structlog.configure(
        processors=[*processors(), lambda _logger, _name, event: ((event,), {})],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=lambda *_args: sink,
        cache_logger_on_first_use=False,
    )
    handler = logging.StreamHandler(file)
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(
        processor=structlog.processors.JSONRenderer(),
        foreign_pre_chain=[structlog.stdlib.add_logger_name, structlog.processors.add_log_level,
                           structlog.processors.TimeStamper(fmt="iso", utc=True)]))
    logging.basicConfig(handlers=[handler], level=logging.WARNING, force=True)


class _DaemonSink:
    """structlog's logger for coordd: writes each entry to the file and the terminal."""

    _LOUD = ("warning", "error", "critical", "exception")

    def __init__(self, file, terminal: str, stream):
        if terminal not in TERMINAL_FORMATS:
            raise ValueError(f"log format must be one of {', '.join(TERMINAL_FORMATS)}, "
                             f"not {terminal!r}")
        self.file, self.terminal, self.stream = file, terminal, stream
        self._json = structlog.processors.JSONRenderer()
        self._console = structlog.dev.ConsoleRenderer(colors=stream.isatty())

    def msg(self, event: dict) -> None:
        line = self._json(None, "", dict(event))
        self.file.write(line + "\n")
        if self.terminal == "json":
            print(line, file=self.stream, flush=True)
        elif self.terminal == "console":
            print(self._console(None, "", dict(event)), file=self.stream, flush=True)
        elif event.get("level") in self._LOUD:
            print(plain_line(event), file=self.stream, flush=True)

    debug = info = warning = warn = error = critical = exception = fatal = log = msg


def plain_line(event: dict) -> str:
    """`coordd: warning: what happened` (the entry's `message`, else its name and fields)."""
    fields = {k: v for k, v in event.items() if k not in ("event", "level", "timestamp")}
    text = fields.pop("message", None) or " ".join(
        [event.get("event", ""), *(f"{k}={v}" for k, v in fields.items())])
    return f"coordd: {event.get('level', 'info')}: {text}"
