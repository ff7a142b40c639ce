"""Who may call coordd: bearer tokens with a role, stored hashed, checked by one interceptor.

Two roles. A `client` token (people, the SDK, `coord`) may call JobService only; an `agent`
join token may call AgentService only. So a leaked agent token cannot submit or cancel jobs,
and a client token cannot register a node.

`tokens.json` in the state directory holds, per token, its id, role, a random salt and
sha256(salt + secret); never the secret. Tokens are 256 random bits, so a fast salted hash is
enough (no password stretching needed). A token reads `<id>.<secret>`: the id finds the entry,
the digest is compared in constant time. At first start coordd mints one client token and one
agent token and writes their plaintext once, mode 0600, to `token` and `agent-token` for the
local user and the local provider. `coordd token create|list|revoke` mints and revokes more;
a running coordd notices the file changed within a second.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import fcntl
import hashlib
import hmac
import json
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import grpc
import structlog

from contract.transport import METADATA_KEY
from coord.v1 import agent_pb2, jobs_pb2
from coordinator.edge import rebuild
from coordinator.tls import write_file

log = structlog.get_logger("coordinator.auth")
Role = Literal["client", "agent"]
ROLES: tuple[Role, ...] = ("client", "agent")
# Which role may call which service, from the descriptors: a new RPC is covered at once.
SERVICE_ROLES: dict[str, Role] = {
    jobs_pb2.DESCRIPTOR.services_by_name["JobService"].full_name: "client",
    agent_pb2.DESCRIPTOR.services_by_name["AgentService"].full_name: "agent",
}
REFRESH_EVERY_S = 1.0


@dataclasses.dataclass(frozen=True)
class TokenEntry:
    id: str
    role: Role
    salt: str
    digest: str
    created_at: float
    note: str = ""


def _digest(salt: str, secret: str) -> str:
    return hashlib.sha256(bytes.fromhex(salt) + secret.encode()).hexdigest()


class TokenStore:
    """The hashed tokens in `tokens.json`; every write is atomic and under a file lock."""

    def __init__(self, path: Path):
        self.path = path
        self._entries: dict[str, TokenEntry] = {}
        self._version: tuple[int, int] | None = None  # (inode, mtime): every write renames
        self._checked = 0.0

    # reading and checking ---------------------------------------------------------------
    def load(self) -> dict[str, TokenEntry]:
        try:
            stat = self.path.stat()
        except FileNotFoundError:
            self._entries, self._version = {}, None
            return self._entries
        if (stat.st_ino, stat.st_mtime_ns) != self._version:
            raw = json.loads(self.path.read_text())
            self._entries = {e["id"]: TokenEntry(**e) for e in raw.get("tokens", [])}
            self._version = (stat.st_ino, stat.st_mtime_ns)
        return self._entries

    async def refresh(self) -> None:
        """Re-read the file if it changed, at most once a second (revocations apply fast)."""
        now = time.monotonic()
        if now - self._checked >= REFRESH_EVERY_S:
            self._checked = now
            try:
                await asyncio.to_thread(self.load)
            except (OSError, ValueError, TypeError) as exc:  # keep serving the tokens we know
                log.error("tokens.unreadable", path=str(self.path), error=str(exc))

    def role_of(self, token: str) -> Role | None:
        token_id, _, secret = token.partition(".")
        entry = self._entries.get(token_id)
        if entry is None or not secret:
            _digest("00", secret)  # the same work either way: no timing hint about ids
            return None
        return entry.role if hmac.compare_digest(_digest(entry.salt, secret),
                                                 entry.digest) else None

    # minting and revoking -------------------------------------------------------------
    def create(self, role: Role, note: str = "") -> str:
        """A new token of `role`; its plaintext is returned here and stored nowhere."""
        if role not in ROLES:
            raise ValueError(f"role must be one of {', '.join(ROLES)}, not {role!r}")
        token_id, secret, salt = secrets.token_hex(6), secrets.token_urlsafe(32), \
            secrets.token_hex(16)
        entry = TokenEntry(token_id, role, salt, _digest(salt, secret), time.time(), note)
        with self._locked() as entries:
            entries[token_id] = entry
        return f"{token_id}.{secret}"

    def revoke(self, token_id: str) -> bool:
        with self._locked() as entries:
            return entries.pop(token_id, None) is not None

    @contextlib.contextmanager
    def _locked(self) -> Iterator[dict[str, TokenEntry]]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_name(self.path.name + ".lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            entries = dict(self.load())
            yield entries
            body = json.dumps({"tokens": [dataclasses.asdict(e) for e in entries.values()]},
                              indent=1)
            write_secret(self.path, body + "\n")
            self.load()


def write_secret(path: Path, text: str) -> None:
    """A file readable by its owner only, written atomically."""
    write_file(path, text.encode(), 0o600)


def bootstrap(tokens: TokenStore, client_path: Path, agent_path: Path) -> str:
    """First start: mint the local user's client token and the agent join token, writing
    their plaintext once (0600). Returns the agent token for the providers coordd runs; a
    fresh one is minted if its file was removed."""
    if not tokens.load():
        write_secret(client_path, tokens.create("client", "first start: local user") + "\n")
    agent = agent_path.read_text().strip() if agent_path.exists() else ""
    if tokens.role_of(agent) != "agent":
        agent = tokens.create("agent", "providers' agents")
        write_secret(agent_path, agent + "\n")
    return agent


# the interceptor ------------------------------------------------------------------------
class AuthInterceptor(grpc.aio.ServerInterceptor):
    """UNAUTHENTICATED without a valid token; PERMISSION_DENIED for a service the token's
    role may not call (and for any service without a role)."""

    def __init__(self, tokens: TokenStore, service_roles: dict[str, Role] = SERVICE_ROLES):
        self.tokens, self.service_roles = tokens, service_roles

    async def intercept_service(self, continuation, details: grpc.HandlerCallDetails):
        handler = await continuation(details)
        if handler is None:
            return None
        await self.tokens.refresh()
        role = self.tokens.role_of(_bearer(details))
        if role is None:
            return refusing(handler, grpc.StatusCode.UNAUTHENTICATED,
                            "missing or wrong token: set COORD_TOKEN (see `coord --help`)")
        service = details.method.lstrip("/").partition("/")[0]
        if self.service_roles.get(service) != role:
            return refusing(handler, grpc.StatusCode.PERMISSION_DENIED,
                            f"a {role} token may not call {details.method[:200]}")
        return handler


def _bearer(details: grpc.HandlerCallDetails) -> str:
    for key, value in details.invocation_metadata or ():
        if key == METADATA_KEY:
            text = value.decode(errors="replace") if isinstance(value, bytes) else value
            return text.removeprefix("Bearer ").strip()
    return ""


def refusing(handler: grpc.RpcMethodHandler, code: grpc.StatusCode,
             message: str) -> grpc.RpcMethodHandler:
    """A handler of the same shape that only aborts with `code`."""
    async def deny(_request, context: grpc.aio.ServicerContext):
        await context.abort(code, message)

    async def deny_stream(_request, context: grpc.aio.ServicerContext):
        await deny(_request, context)
        yield  # pragma: no cover - abort raises

    return rebuild(handler, deny_stream if handler.response_streaming else deny)
