"""One supervisor for coordd's long-running background tasks (the node watchdog, each job's
reconciler): a task that raises is logged and started again, and one that keeps raising is
handed to its `gave_up` callback (a job's fails, with the error as its reason) instead of
leaving its work silently undone. `close` cancels them all and waits for them."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import structlog

log = structlog.get_logger("coordinator.supervise")
Factory = Callable[[], Awaitable[None]]
GaveUp = Callable[[BaseException], Awaitable[None]]


class Supervisor:
    def __init__(self, restarts: int = 2):
        self.restarts = restarts  # in a row, before giving up
        self._tasks: set[asyncio.Task] = set()

    def start(self, name: str, factory: Factory, gave_up: GaveUp | None = None) -> asyncio.Task:
        """Run `factory()` until it returns; start it again when it raises."""
        return self.spawn(self._keep(name, factory, gave_up))

    def spawn(self, coro: Awaitable[None]) -> asyncio.Task:
        """A one-off task, cancelled with the others at close."""
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _keep(self, name: str, factory: Factory, gave_up: GaveUp | None) -> None:
        for attempt in range(self.restarts + 1):
            try:
                return await factory()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.error("task.crashed", task=name, attempt=attempt + 1, exc_info=exc)
                error = exc
        if gave_up is not None:
            try:
                await gave_up(error)
            except Exception:
                log.exception("task.give_up_failed", task=name)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
