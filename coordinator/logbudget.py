"""Bounds on what a job's output can cost coordd: each line is cut at `max_line_bytes`, and
past `max_bytes_per_job` of stored text a job's further lines are dropped, leaving one notice
line. Agents cut lines too; this is the coordinator not trusting them to."""

from __future__ import annotations

import dataclasses

import structlog

from coordinator.store import LogRecord, Store

log = structlog.get_logger("coordinator.logbudget")


def cut(text: str, limit: int) -> str:
    raw = text.encode()
    if len(raw) <= limit:
        return text
    return raw[:limit].decode(errors="ignore") + f" [line cut at {limit} bytes]"


class LogBudget:
    def __init__(self, store: Store, max_line_bytes: int, max_bytes_per_job: int):
        self.store, self.max_line, self.max_bytes = store, max_line_bytes, max_bytes_per_job
        self._used: dict[str, int] = {}  # loaded from the store once per job, then counted

    async def admit(self, lines: list[LogRecord]) -> list[LogRecord]:
        """The lines to store, cut and counted; the notice replaces the first line over."""
        admitted = []
        for line in lines:
            if line.job_id not in self._used:
                self._used[line.job_id] = await self.store.log_bytes(line.job_id)
            used = self._used[line.job_id]
            if used >= self.max_bytes:
                continue  # already over: the notice was stored when it happened
            text = cut(line.text, self.max_line)
            size = len(text.encode())
            if used + size > self.max_bytes:
                log.warning("logs.capped", job=line.job_id, limit_bytes=self.max_bytes)
                text = (f"[coord] this job's stored output reached {self.max_bytes} bytes: "
                        "later lines are dropped (setting max_log_bytes_per_job)")
                size = self.max_bytes - used  # counts as full from now on
            self._used[line.job_id] = used + size
            admitted.append(dataclasses.replace(line, text=text))
        return admitted
