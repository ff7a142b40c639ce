"""The JSON the pages fetch: the jobs list, one job, its logs, the nodes; and cancel."""

from __future__ import annotations

import time

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from contract.errors import CoordError, NotFound
from contract.states import JobState, NodeState
from coordinator.dashboard import history, queries, views

PER_PAGE, MAX_PER_PAGE = 50, 500
DETAIL_POINTS = 5000  # progress lines a job page charts (the newest)
ROW_POINTS = 500  # a jobs-list row reads fewer: its figures need the recent ones
MAX_TAIL = 2000


def _int(request: Request, name: str, default: int, lo: int, hi: int) -> int:
    try:
        return max(lo, min(hi, int(request.query_params.get(name, default))))
    except ValueError:
        return default


def _page_meta(page: queries.Page) -> dict:
    return {"total": page.total, "page": page.page, "per_page": page.per_page}


async def jobs(request: Request) -> Response:
    deps = request.app.state.deps
    state = request.query_params.get("state", "")
    if state and state != "active" and state not in JobState.__members__:
        return JSONResponse({"error": f"state: one of active, {', '.join(JobState)}"}, 400)
    page = await queries.jobs_page(deps.store, state, _int(request, "page", 1, 1, 10**6),
                                   _int(request, "per_page", PER_PAGE, 1, MAX_PER_PAGE))
    ids = [r.id for r in page.rows]
    events = await queries.events_of(deps.store, ids)
    lines = await queries.progress_of(deps.store, ids, ROW_POINTS)
    rows = [views.job_summary(r, events[r.id], history.progress(lines[r.id]))
            for r in page.rows]
    return JSONResponse({"jobs": rows, **_page_meta(page)})


async def job(request: Request) -> Response:
    deps = request.app.state.deps
    try:
        record = await deps.store.get_job(request.path_params["job_id"][:200])
    except NotFound as exc:
        return JSONResponse({"error": str(exc)}, 404)
    events = (await queries.events_of(deps.store, [record.id]))[record.id]
    lines = (await queries.progress_of(deps.store, [record.id], DETAIL_POINTS))[record.id]
    live = deps.nodes.nodes
    held = {n.id: n for n in await deps.store.list_nodes(record.id, include_gone=True)}
    held.update({i: live[i] for i in record.node_ids if i in live})
    nodes = [_node_row(deps, live.get(i, n)) for i, n in held.items()]
    return JSONResponse(views.job_detail(record, events, history.progress(lines), nodes))


def _node_row(deps, record) -> dict:
    """A node's row, its heartbeat age from the agent's open stream where there is one."""
    session = deps.nodes.sessions.get(record.id)
    age = time.monotonic() - session.last_heartbeat if session and not session.closed else None
    return views.node_row(record, age)


async def logs(request: Request) -> Response:
    deps = request.app.state.deps
    rank_text = request.query_params.get("rank", "")
    try:
        rank = int(rank_text) if rank_text else None
        record = await deps.store.get_job(request.path_params["job_id"][:200])
    except ValueError:
        return JSONResponse({"error": "rank: a whole number"}, 400)
    except NotFound as exc:
        return JSONResponse({"error": str(exc)}, 404)
    lines = await deps.store.read_logs(record.id, rank=rank,
                                       tail=_int(request, "tail", 200, 1, MAX_TAIL))
    return JSONResponse({"lines": [views.log_row(line) for line in lines]})


async def cancel(request: Request) -> Response:
    deps = request.app.state.deps
    who = request.state.session.token_id
    try:
        record = await deps.jobs.cancel(request.path_params["job_id"][:200],
                                        f"cancelled from the dashboard (token {who})")
    except CoordError as exc:
        return JSONResponse({"error": str(exc)}, 404 if isinstance(exc, NotFound) else 409)
    return JSONResponse({"state": str(record.state)})


async def nodes(request: Request) -> Response:
    deps = request.app.state.deps
    state = request.query_params.get("state", "")
    if state and state not in NodeState.__members__:
        return JSONResponse({"error": f"state: one of {', '.join(NodeState)}"}, 400)
    page, by_state = await queries.nodes_page(
        deps.store, state, _int(request, "page", 1, 1, 10**6),
        _int(request, "per_page", PER_PAGE * 2, 1, MAX_PER_PAGE))
    live = deps.nodes.nodes
    return JSONResponse({"nodes": [_node_row(deps, live.get(n.id, n)) for n in page.rows],
                         "by_state": by_state, **_page_meta(page)})
