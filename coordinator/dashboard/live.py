"""Server-sent events for one job page: each new job event and log line as it is stored,
straight from coordd's in-process bus (no polling, so a re-formation shows at once)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from contract.errors import NotFound
from coordinator.bus import CLOSED, Bus
from coordinator.dashboard import views

KEEPALIVE_S = 15.0  # a comment line now and then: proxies keep the stream open
TOPICS = {"events": "job", "logs": "log"}


async def stream(request: Request) -> Response:
    deps = request.app.state.deps
    rank_text = request.query_params.get("rank", "")
    try:
        record = await deps.store.get_job(request.path_params["job_id"][:200])
        rank = int(rank_text) if rank_text else None
    except NotFound as exc:
        return JSONResponse({"error": str(exc)}, 404)
    except ValueError:
        return JSONResponse({"error": "rank: a whole number"}, 400)
    ended = record.state.terminal
    return StreamingResponse(_events(deps, record.id, rank, ended, request),
                             media_type="text/event-stream",
                             headers={"x-accel-buffering": "no"})


async def _events(deps, job_id: str, rank: int | None, ended: bool,
                  request: Request) -> AsyncIterator[str]:
    """The stream ends when the job ends, the browser goes, or coordd stops (`close_all`)."""
    merged: asyncio.Queue = asyncio.Queue()
    bus: Bus = deps.bus
    deps.streams.add(merged)
    with bus.subscribe("events", job_id) as events, bus.subscribe("logs", job_id) as logs:
        pumps = [asyncio.create_task(_pump(q, name, merged))
                 for q, name in ((events, "events"), (logs, "logs"))]
        try:
            yield ": subscribed\n\n"
            if ended:
                yield "event: end\ndata: {}\n\n"
                return
            while not await request.is_disconnected():
                try:
                    topic, item = await asyncio.wait_for(merged.get(), KEEPALIVE_S)
                except TimeoutError:
                    yield ": keep-alive\n\n"
                    continue
                if item is CLOSED:
                    yield "event: end\ndata: {}\n\n"
                    return
                if topic == "logs" and rank is not None and item.rank != rank:
                    continue
                row = views.event_row(item) if topic == "events" else views.log_row(item)
                yield f"event: {TOPICS[topic]}\ndata: {json.dumps(row)}\n\n"
        finally:
            deps.streams.discard(merged)
            for pump in pumps:
                pump.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await pump


async def _pump(queue: asyncio.Queue, topic: str, merged: asyncio.Queue) -> None:
    while True:
        merged.put_nowait((topic, await queue.get()))


def close_all(streams: set[asyncio.Queue]) -> None:
    """End every open live stream now (coordd is stopping): browsers then reconnect."""
    for queue in streams:
        queue.put_nowait(("", CLOSED))
