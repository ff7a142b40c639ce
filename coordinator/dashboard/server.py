"""Runs the dashboard inside coordd: uvicorn on coordd's own event loop, HTTPS with coordd's
certificate, on `dashboard_listen`. Writes its URL to STATE_DIR/dashboard.url (for
`coord dashboard`) and removes it at the stop."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from pathlib import Path

import structlog
import uvicorn

from contract.instance import DASHBOARD_URL_FILE
from coordinator.auth import TokenStore
from coordinator.dashboard.app import Deps, create_app
from coordinator.dashboard.live import close_all
from coordinator.dashboard.session import Sessions
from coordinator.settings import CoorddSettings
from coordinator.tls import WILDCARD_HOSTS, write_file

log = structlog.get_logger("coordinator.dashboard")
SHUTDOWN_S = 2  # requests still open this long after coordd's stop began are cut


class _InLoopServer(uvicorn.Server):
    """uvicorn without its own signal handlers: coordd's loop owns SIGTERM and SIGINT."""

    @contextlib.contextmanager
    def capture_signals(self):
        yield


class Dashboard:
    def __init__(self, settings: CoorddSettings, tokens: TokenStore, store, bus, jobs, nodes):
        self.settings = settings
        self.deps = Deps(store, bus, jobs, nodes, Sessions(tokens))
        self.url = ""
        self._server: _InLoopServer | None = None
        self._task: asyncio.Task | None = None

    async def start(self) -> str:
        """Listen (port 0: a free one) and serve in the background; returns the URL."""
        s = self.settings
        host, _, port = s.dashboard_listen.rpartition(":")
        sock = _bind(host or "127.0.0.1", int(port or 0))
        cert, key = _cert_files(s)
        config = uvicorn.Config(create_app(self.deps), ssl_certfile=str(cert),
                                ssl_keyfile=str(key), log_config=None, access_log=False,
                                lifespan="off", timeout_graceful_shutdown=SHUTDOWN_S)
        self._server = _InLoopServer(config)
        self._task = asyncio.create_task(self._server.serve(sockets=[sock]))
        while not self._server.started:
            if self._task.done():
                await self._task  # raises what stopped it
                raise OSError(f"dashboard: cannot serve on {s.dashboard_listen}")
            await asyncio.sleep(0.01)
        shown = _public(host) if host.strip("[]") in WILDCARD_HOSTS else host or "127.0.0.1"
        self.url = f"https://{shown}:{sock.getsockname()[1]}/"
        await asyncio.to_thread(write_file, s.state_dir / DASHBOARD_URL_FILE,
                                self.url.encode() + b"\n", 0o644)
        log.info("dashboard.listening", url=self.url)
        return self.url

    async def stop(self) -> None:
        (self.settings.state_dir / DASHBOARD_URL_FILE).unlink(missing_ok=True)
        close_all(self.deps.streams)
        if self._server is not None and self._task is not None:
            self._server.should_exit = True
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host.strip("[]") else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host.strip("[]"), port))
    except OSError as exc:
        sock.close()
        raise OSError(f"dashboard_listen: cannot listen on {host}:{port}: {exc}") from None
    sock.set_inheritable(True)
    return sock


def _cert_files(s: CoorddSettings) -> tuple[Path, Path]:
    """coordd's own server certificate: the user's files, or the generated ones."""
    if s.tls_cert and s.tls_key:
        return s.tls_cert, s.tls_key
    return s.tls_dir / "server.pem", s.tls_dir / "server.key"


def _public(host: str) -> str:
    return socket.getfqdn() or socket.gethostname() or host


def tls_names(s: CoorddSettings) -> list[str]:
    """The names the dashboard is reached by, for coordd's generated certificate."""
    host = s.dashboard_listen.rpartition(":")[0].strip("[]")
    if host in WILDCARD_HOSTS:
        return [socket.gethostname(), socket.getfqdn()]
    return [host]
