"""A warm worker: a Python interpreter started ahead of time that has already imported torch
(and torch.optim, torch.distributed, torch._dynamo) and waits for its
assignment, so a replacement node's first worker does not pay interpreter start-up and those
imports (about 2.5 s on a small CPU host) on the critical path.

The agent keeps one ready while it is idle, and beside an in-process replica that coordd
would restart in place (StartWorkers.keep_warm) once it committed its first step (on by
default; COORD_AGENT_WARM_START=0 turns it off: it costs an idle interpreter's memory).
A job's command can take it only when it
is exactly `python SCRIPT.py [ARGS...]` or `python -m MODULE [ARGS...]` and the job sets none of
the variables an interpreter or torch reads at start-up to other values than the warm one has
(PYTHON*, OMP_*, MKL_*, KMP_*, TORCH_*, PYTORCH_*, LD_*): the warm process then receives the
working directory, the environment and argv as one JSON line on stdin and runs the script or
module as `__main__`. Any other command starts cold, as before.
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

from agent.lifeline import Lifeline
from contract.agentenv import WARM_START_ENV

log = structlog.get_logger("agent.warm")
_PLAIN = re.compile(r"^[\w./=:,+@%-]+$")  # an argument with nothing bash would expand
_MODULE = re.compile(r"^[A-Za-z_][\w.]*$")
# Read by the interpreter or by `import torch`, so they must not differ for a warm start.
_STARTUP_VARS = ("PYTHON", "OMP_", "MKL_", "KMP_", "TORCH_", "PYTORCH_", "LD_")
# The warm interpreter runs `python -c WARM_MAIN` (how tools and tests can tell one apart).
WARM_MAIN = """
import importlib, json, os, runpy, sys
import torch, torch.optim, torch.distributed  # the point: paid before the assignment arrives
import torch._dynamo  # what the first optimizer step imports (slow, so paid here too)
# Not torchft: its native logger reads RUST_LOG once, at import, before the job's is set.
spec = json.loads(sys.stdin.readline())
os.chdir(spec["cwd"])
os.environ.clear()
os.environ.update(spec["env"])
argv = spec["argv"]
if argv[0] == "-m":
    sys.argv, sys.path[0] = [argv[1], *argv[2:]], os.getcwd()
    importlib.invalidate_caches()
    runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
else:
    sys.argv, sys.path[0] = argv, os.path.dirname(os.path.abspath(argv[0]))
    runpy.run_path(argv[0], run_name="__main__")
"""


def warm_argv(command: str) -> list[str] | None:
    """argv for a warm start (`SCRIPT.py ...` or `-m MODULE ...`), or None when the command
    needs bash or is neither."""
    try:
        argv = shlex.split(command)
    except ValueError:
        return None
    if len(argv) < 2 or argv[0] not in ("python", "python3"):
        return None
    script = argv[1].endswith(".py")
    module = argv[1] == "-m" and len(argv) > 2 and _MODULE.match(argv[2]) is not None
    if not (script or module):
        return None
    return argv[1:] if all(_PLAIN.match(arg) for arg in argv) else None


def startup_differs(env: dict[str, str], warm_env: dict[str, str]) -> list[str]:
    """Variables read at interpreter or torch start-up that the job sets differently."""
    keys = {k for k in (*env, *warm_env) if k.startswith(_STARTUP_VARS)}
    return sorted(k for k in keys if env.get(k) != warm_env.get(k))


class WarmPool:
    """At most one pre-started interpreter; `fill` starts it, `take` hands it over."""

    def __init__(self, stream_limit: int, env: dict[str, str]) -> None:
        """`env`: the warm interpreter's environment (a worker's, less the job's variables:
        never the agent's token, which would stay readable in /proc/PID/environ)."""
        self.stream_limit, self.env = stream_limit, env
        self._ready: asyncio.subprocess.Process | None = None
        self._lifeline: Lifeline | None = None  # the ready interpreter's (see agent/lifeline.py)
        self._filling: asyncio.Task | None = None

    @staticmethod
    def enabled() -> bool:
        return os.environ.get(WARM_START_ENV, "1") not in ("", "0")

    def fill(self) -> None:
        if self._ready is None and (self._filling is None or self._filling.done()):
            self._filling = asyncio.get_running_loop().create_task(self._spawn())

    async def _spawn(self) -> None:
        lifeline = Lifeline()  # inherited now: a descriptor cannot be handed over later
        try:
            self._ready = await asyncio.create_subprocess_exec(
                sys.executable, "-c", WARM_MAIN, stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
                env=self.env, process_group=0, pass_fds=(lifeline.read_fd,),
                limit=self.stream_limit)
        except OSError as exc:
            lifeline.close()
            log.warning("warm.spawn_failed", error=str(exc))
            return
        lifeline.spawned()
        self._lifeline = lifeline

    async def take(self, command: str, cwd: Path, env: dict[str, str]
                   ) -> tuple[asyncio.subprocess.Process, Lifeline] | None:
        """The warm process, now running `command`, and its lifeline; None if the command
        must start cold."""
        argv = warm_argv(command)
        if argv is None:
            return None
        if differs := startup_differs(env, self.env):
            log.info("warm.skipped", reason="start-up variables differ", variables=differs)
            return None
        if self._filling is not None:
            await self._filling
        proc, lifeline = self._ready, self._lifeline
        self._ready = self._lifeline = None
        if proc is None or lifeline is None or proc.returncode is not None or proc.stdin is None:
            if lifeline is not None:
                lifeline.close()
            return None
        spec = {"cwd": str(cwd), "env": {**env, **lifeline.env()}, "argv": argv}
        proc.stdin.write(json.dumps(spec).encode() + b"\n")
        with contextlib.suppress(ConnectionError):
            await proc.stdin.drain()
        proc.stdin.close()
        return proc, lifeline  # no refill now: importing torch would compete with its start

    async def close(self) -> None:
        if self._filling is not None:
            self._filling.cancel()
            await asyncio.gather(self._filling, return_exceptions=True)
        if self._ready is not None and self._ready.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self._ready.kill()
            await self._ready.wait()
        if self._lifeline is not None:
            self._lifeline.close()
