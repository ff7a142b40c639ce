"""A warm worker: a Python interpreter started ahead of time that has already imported torch and
waits for its assignment, so a replacement node's first worker does not pay interpreter start-up
and `import torch` (about 1.2 s on a small CPU host) on the critical path.

The agent keeps one ready (off by default; COORD_AGENT_WARM_START=1 turns it on: it costs an
idle interpreter's memory per node). A job's command can take it only when it is exactly
`python SCRIPT.py [ARGS...]`: the warm process then receives the working directory, the
environment and argv as one JSON line on stdin and runs the script as `__main__`. Any other
command starts cold, as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shlex
import sys
from pathlib import Path

import structlog

log = structlog.get_logger("agent.warm")
ENABLE_ENV = "COORD_AGENT_WARM_START"
_PLAIN = re.compile(r"^[\w./=:,+@%-]+$")  # an argument with nothing bash would expand
_MAIN = """
import json, os, runpy, sys
import torch  # the point: paid before the assignment arrives
spec = json.loads(sys.stdin.readline())
os.chdir(spec["cwd"])
os.environ.clear()
os.environ.update(spec["env"])
sys.argv = spec["argv"]
sys.path[0] = os.path.dirname(os.path.abspath(sys.argv[0]))
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def warm_argv(command: str) -> list[str] | None:
    """argv for a warm start, or None when the command needs bash (or is not a script)."""
    try:
        argv = shlex.split(command)
    except ValueError:
        return None
    if len(argv) < 2 or argv[0] not in ("python", "python3") or not argv[1].endswith(".py"):
        return None
    return argv[1:] if all(_PLAIN.match(arg) for arg in argv) else None


class WarmPool:
    """At most one pre-started interpreter; `fill` starts it, `take` hands it over."""

    def __init__(self, stream_limit: int) -> None:
        self.stream_limit = stream_limit
        self._ready: asyncio.subprocess.Process | None = None
        self._filling: asyncio.Task | None = None

    @staticmethod
    def enabled() -> bool:
        return os.environ.get(ENABLE_ENV, "") not in ("", "0")

    def fill(self) -> None:
        if self._ready is None and (self._filling is None or self._filling.done()):
            self._filling = asyncio.get_running_loop().create_task(self._spawn())

    async def _spawn(self) -> None:
        try:
            self._ready = await asyncio.create_subprocess_exec(
                sys.executable, "-c", _MAIN, stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
                env={**os.environ, "PYTHONUNBUFFERED": "1"}, process_group=0,
                limit=self.stream_limit)
        except OSError as exc:
            log.warning("warm.spawn_failed", error=str(exc))

    async def take(self, command: str, cwd: Path,
                   env: dict[str, str]) -> asyncio.subprocess.Process | None:
        """The warm process, now running `command`; None if the command must start cold."""
        argv = warm_argv(command)
        if argv is None:
            return None
        if self._filling is not None:
            await self._filling
        proc, self._ready = self._ready, None
        if proc is None or proc.returncode is not None or proc.stdin is None:
            return None
        proc.stdin.write(json.dumps({"cwd": str(cwd), "env": env, "argv": argv}).encode() + b"\n")
        with contextlib.suppress(ConnectionError):
            await proc.stdin.drain()
        proc.stdin.close()
        return proc  # no refill now: importing torch would compete with this worker

    async def close(self) -> None:
        if self._filling is not None:
            self._filling.cancel()
            await asyncio.gather(self._filling, return_exceptions=True)
        if self._ready is not None and self._ready.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self._ready.kill()
            await self._ready.wait()
