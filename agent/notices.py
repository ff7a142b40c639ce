"""Watches the EC2 instance metadata service (IMDSv2) for an interruption notice: a session
token, then `spot/instance-action` and `events/recommendations/rebalance`, every few seconds
(AWS advises 5). Off unless an endpoint is given: the aws provider passes the real one."""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request
from collections.abc import Callable

import structlog

log = structlog.get_logger("agent.notices")
TOKEN_TTL_S = 21600
PATHS = {"spot.instance-action": "/latest/meta-data/spot/instance-action",
         "rebalance": "/latest/meta-data/events/recommendations/rebalance"}


class NoticeWatcher:
    def __init__(self, endpoint: str, interval_s: float, on_notice: Callable[[str, str], None]):
        self.endpoint, self.interval_s, self.on_notice = endpoint.rstrip("/"), interval_s, on_notice
        self._token = ""
        self._seen: set[str] = set()

    async def run(self) -> None:
        while True:
            try:
                await asyncio.to_thread(self._poll_once)
            except (OSError, urllib.error.URLError, ValueError) as exc:
                log.debug("notices.unreachable", endpoint=self.endpoint, error=str(exc))
                self._token = ""
            await asyncio.sleep(self.interval_s)

    def _poll_once(self) -> None:
        if not self._token:
            self._token = self._request("PUT", "/latest/api/token",
                                        {"X-aws-ec2-metadata-token-ttl-seconds": str(TOKEN_TTL_S)})
        for kind, path in PATHS.items():
            try:
                body = self._request("GET", path, {"X-aws-ec2-metadata-token": self._token})
            except urllib.error.HTTPError as exc:
                if exc.code == 401:
                    self._token = ""  # expired: a new one next round
                if exc.code in (401, 404):
                    continue
                raise
            if kind not in self._seen:
                self._seen.add(kind)
                json.loads(body)  # a notice is a JSON document; anything else is not one
                log.warning("notices.received", kind=kind, notice=body)
                self.on_notice(kind, body)

    def _request(self, method: str, path: str, headers: dict[str, str]) -> str:
        request = urllib.request.Request(self.endpoint + path, method=method, headers=headers)
        with urllib.request.urlopen(request, timeout=2) as response:
            return response.read().decode()
