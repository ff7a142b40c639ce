"""The dashboard's Starlette application: pages, sign-in, and the guard every other route
sits behind (a live session; for a state-changing request also its CSRF token and a
same-origin request)."""

from __future__ import annotations

import dataclasses
import functools
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from coordinator.dashboard import api, live
from coordinator.dashboard.session import COOKIE, CSRF_HEADER, LoginRefused, Sessions, csrf_ok

if TYPE_CHECKING:
    from coordinator.bus import Bus
    from coordinator.jobs import JobManager
    from coordinator.nodes import NodeRegistry
    from coordinator.store import Store

STATIC = Path(__file__).parent / "static"
# Scripts and styles from this origin only, no inline code, no framing: even text that
# slipped past escaping could not run.
HEADERS = {
    "content-security-policy": "default-src 'self'; script-src 'self'; style-src 'self'; "
                               "img-src 'self' data:; connect-src 'self'; object-src 'none'; "
                               "base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
    "x-content-type-options": "nosniff", "referrer-policy": "no-referrer",
    "x-frame-options": "DENY", "cache-control": "no-store"}
MAX_LOGIN_BYTES = 4096


@dataclasses.dataclass
class Deps:
    store: Store
    bus: Bus
    jobs: JobManager
    nodes: NodeRegistry
    sessions: Sessions
    streams: set = dataclasses.field(default_factory=set)  # open live streams' queues


Handler = Callable[[Request], Awaitable[Response]]


def guarded(handler: Handler) -> Handler:
    """A live session, or 401 (API) / the sign-in page (pages); for POST, also the session's
    CSRF token in a header and, where the browser says, this origin."""
    @functools.wraps(handler)
    async def wrapper(request: Request) -> Response:
        deps: Deps = request.app.state.deps
        session = await deps.sessions.find(request.cookies.get(COOKIE))
        if session is None:
            if request.url.path.startswith("/api/"):
                return JSONResponse({"error": "sign in first"}, 401)
            return RedirectResponse("/login", 303)
        if request.method == "POST" and not (
                csrf_ok(session, request.headers.get(CSRF_HEADER)) and _same_origin(request)):
            return JSONResponse({"error": "missing or wrong CSRF token"}, 403)
        request.state.session = session
        return await handler(request)
    return wrapper


def _same_origin(request: Request) -> bool:
    origin = request.headers.get("origin")
    return origin is None or origin == f"{request.url.scheme}://{request.url.netloc}"


def page(name: str) -> Handler:
    async def serve(_request: Request) -> Response:
        return FileResponse(STATIC / name, media_type="text/html")
    return guarded(serve)


async def login_page(_request: Request) -> Response:
    return FileResponse(STATIC / "login.html", media_type="text/html")


async def login(request: Request) -> Response:
    """JSON {"token": ...}: a cross-site form cannot send JSON without the browser asking
    this origin first, which it refuses."""
    if request.headers.get("content-type", "").split(";")[0] != "application/json" or \
            not _same_origin(request):
        return JSONResponse({"error": "send the token as JSON from the sign-in page"}, 415)
    body = await request.body()
    try:
        token = str(json.loads(body[:MAX_LOGIN_BYTES]).get("token", ""))
    except (ValueError, AttributeError):
        return JSONResponse({"error": "body: {\"token\": \"...\"}"}, 400)
    deps: Deps = request.app.state.deps
    try:
        session_id, session = await deps.sessions.login(token)
    except LoginRefused as exc:
        return JSONResponse({"error": str(exc)}, exc.status)
    response = JSONResponse({"ok": True})
    response.set_cookie(COOKIE, session_id, max_age=int(deps.sessions.lifetime_s),
                        httponly=True, secure=True, samesite="strict", path="/")
    return response


async def logout(request: Request) -> Response:
    request.app.state.deps.sessions.logout(request.cookies.get(COOKIE))
    response = RedirectResponse("/login", 303)
    response.delete_cookie(COOKIE, path="/", secure=True, httponly=True, samesite="strict")
    return response


async def session_info(request: Request) -> Response:
    return JSONResponse({"csrf": request.state.session.csrf})


def create_app(deps: Deps) -> Starlette:
    routes = [
        Route("/login", login_page), Route("/login", login, methods=["POST"]),
        Route("/logout", logout, methods=["POST"]),
        Route("/", page("jobs.html")), Route("/jobs/{job_id}", page("job.html")),
        Route("/nodes", page("nodes.html")),
        Route("/api/session", guarded(session_info)),
        Route("/api/jobs", guarded(api.jobs)), Route("/api/jobs/{job_id}", guarded(api.job)),
        Route("/api/jobs/{job_id}/logs", guarded(api.logs)),
        Route("/api/jobs/{job_id}/live", guarded(live.stream)),
        Route("/api/jobs/{job_id}/cancel", guarded(api.cancel), methods=["POST"]),
        Route("/api/nodes", guarded(api.nodes)),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]
    app = Starlette(routes=routes, middleware=[Middleware(SecurityHeaders)])
    app.state.deps = deps
    return app


class SecurityHeaders:
    """Adds HEADERS to every response (plain ASGI: the live stream passes through as is)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def with_headers(message):
            if message["type"] == "http.response.start":
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], *(
                    (k.encode(), v.encode()) for k, v in HEADERS.items())]
            await send(message)
        await self.app(scope, receive, with_headers)
