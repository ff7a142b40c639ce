"""A stand-in for the EC2 instance metadata service (IMDSv2), one per local node: the same
paths and token handshake, so the agent's notice watcher runs unchanged, and `coord debug
interrupt NODE` can rehearse a spot interruption on one machine."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import secrets

TOKEN_PATH = "/latest/api/token"
ACTION_PATH = "/latest/meta-data/spot/instance-action"
REBALANCE_PATH = "/latest/meta-data/events/recommendations/rebalance"
TTL_HEADER = "x-aws-ec2-metadata-token-ttl-seconds"
TOKEN_HEADER = "x-aws-ec2-metadata-token"


def _iso(when: dt.datetime) -> str:
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


class MetadataStandIn:
    def __init__(self) -> None:
        self.tokens: set[str] = set()
        self.documents: dict[str, str] = {}
        self.server: asyncio.Server | None = None

    @property
    def endpoint(self) -> str:
        host, port = self.server.sockets[0].getsockname()[:2]
        return f"http://{host}:{port}"

    async def start(self, host: str = "127.0.0.1") -> MetadataStandIn:
        self.server = await asyncio.start_server(self._serve, host, 0)
        return self

    def announce(self, action: str = "terminate", in_s: float = 120.0) -> None:
        """What EC2 says two minutes before it takes a spot instance back."""
        now = dt.datetime.now(dt.UTC)
        if action == "rebalance":
            self.documents[REBALANCE_PATH] = json.dumps({"noticeTime": _iso(now)})
        else:
            when = now + dt.timedelta(seconds=in_s)
            self.documents[ACTION_PATH] = json.dumps({"action": action, "time": _iso(when)})

    async def close(self) -> None:
        if self.server:
            self.server.close()
            await self.server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            method, path, headers = await _read_request(reader)
            status, body = self._respond(method, path, headers)
            writer.write(f"HTTP/1.1 {status}\r\nContent-Length: {len(body)}\r\n"
                         f"Content-Type: text/plain\r\nConnection: close\r\n\r\n{body}".encode())
            await writer.drain()
        except (ValueError, ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    def _respond(self, method: str, path: str, headers: dict[str, str]) -> tuple[str, str]:
        if method == "PUT" and path == TOKEN_PATH:
            if TTL_HEADER not in headers:
                return "400 Bad Request", ""
            token = secrets.token_urlsafe(24)
            self.tokens.add(token)
            return "200 OK", token
        if headers.get(TOKEN_HEADER) not in self.tokens:
            return "401 Unauthorized", ""
        if method == "GET" and path in self.documents:
            return "200 OK", self.documents[path]
        return "404 Not Found", ""


async def _read_request(reader: asyncio.StreamReader) -> tuple[str, str, dict[str, str]]:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    lines = head.decode("latin-1").split("\r\n")
    method, path, _ = lines[0].split(" ", 2)
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            key, value = line.split(":", 1)
            headers[key.strip().lower()] = value.strip()
    return method, path, headers
