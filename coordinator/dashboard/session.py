"""Dashboard sign-in: a client-role token, entered once, buys a server-side session named by
a random cookie (HttpOnly, Secure, SameSite=Strict, expiring). Agent tokens are refused.

Sessions live in coordd's memory only: a coordd restart signs everyone out, and a revoked
token ends its sessions at their next request. Each session has its own CSRF token, which
state-changing requests must send back in a header (a cross-site form cannot set one).
"""

from __future__ import annotations

import dataclasses
import hmac
import secrets
import time

from coordinator.auth import TokenStore

COOKIE = "coord_session"
CSRF_HEADER = "x-csrf-token"
LIFETIME_S = 8 * 3600  # a working day: long enough for an incident, short for a lost laptop
MAX_SESSIONS = 1000


@dataclasses.dataclass
class Session:
    token_id: str
    csrf: str
    expires: float


class LoginRefused(Exception):
    """The token is missing, wrong, revoked, or not a client token: said to the person."""

    def __init__(self, message: str, status: int):
        super().__init__(message)
        self.status = status  # 401: no valid token; 403: a valid token of the wrong role


class Sessions:
    def __init__(self, tokens: TokenStore, lifetime_s: float = LIFETIME_S):
        self.tokens, self.lifetime_s = tokens, lifetime_s
        self._by_id: dict[str, Session] = {}

    async def login(self, token: str) -> tuple[str, Session]:
        """A new session for a client token; LoginRefused otherwise."""
        await self.tokens.refresh()
        role = self.tokens.role_of(token.strip()) if token else None
        if role is None:
            raise LoginRefused("wrong or revoked token", 401)
        if role != "client":
            raise LoginRefused(f"{role} tokens cannot sign in: use a client token "
                               "(`coordd token create --role client`)", 403)
        self._expire()
        session_id = secrets.token_urlsafe(32)
        session = Session(token.partition(".")[0], secrets.token_urlsafe(32),
                          time.time() + self.lifetime_s)
        self._by_id[session_id] = session
        return session_id, session

    async def find(self, session_id: str | None) -> Session | None:
        """The live session of a cookie: not expired, its token still accepted."""
        session = self._by_id.get(session_id or "")
        if session is None or session.expires < time.time():
            return None
        await self.tokens.refresh()
        entry = self.tokens.load().get(session.token_id)
        if entry is None or entry.role != "client":
            self._by_id.pop(session_id or "", None)
            return None
        return session

    def logout(self, session_id: str | None) -> None:
        self._by_id.pop(session_id or "", None)

    def _expire(self) -> None:
        now = time.time()
        for key in [k for k, s in self._by_id.items() if s.expires < now]:
            del self._by_id[key]
        while len(self._by_id) >= MAX_SESSIONS:  # the oldest goes: memory stays bounded
            del self._by_id[min(self._by_id, key=lambda k: self._by_id[k].expires)]


def csrf_ok(session: Session, sent: str | None) -> bool:
    return bool(sent) and hmac.compare_digest(session.csrf.encode(), (sent or "").encode())
