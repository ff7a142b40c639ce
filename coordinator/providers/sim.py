"""The `sim` provider: a job's nodes are simulated agents (bench/scaleagents.py) that speak
the real agent protocol but run no workers, for benchmarks and scale tests. coordd hands each
launch to the load generators through a spool folder: `SPOOL/launch/*.json` names the node
ids to bring up (one generator claims each file), `SPOOL/ctl/NODE.drop` takes one away."""

from __future__ import annotations

import asyncio
import json
import secrets
from pathlib import Path

import structlog

from contract.spec import JobSpec
from coordinator.providers.base import Provider
from coordinator.store import JobRecord, NodeRecord

log = structlog.get_logger("coordinator.providers.sim")
# Launch files of at most this many nodes, so several generators share a large job.
CHUNK = 250


class SimProvider(Provider):
    name = "sim"

    def __init__(self, spool: Path):
        self.spool = spool

    async def launch(self, nodes: list[NodeRecord], job: JobRecord, spec: JobSpec) -> None:
        await asyncio.to_thread(self._write_launches, [n.id for n in nodes], job.id)
        for node in nodes:
            node.host = "127.0.0.1"
        log.info("sim.launched", job=job.id, nodes=len(nodes))

    def _write_launches(self, node_ids: list[str], job_id: str) -> None:
        (self.spool / "launch").mkdir(parents=True, exist_ok=True)
        for start in range(0, len(node_ids), CHUNK):
            name = f"{job_id}-{secrets.token_hex(4)}"
            tmp = self.spool / f".{name}.tmp"
            tmp.write_text(json.dumps({"job": job_id, "nodes": node_ids[start:start + CHUNK]}))
            tmp.replace(self.spool / "launch" / f"{name}.json")  # whole, or not at all

    async def terminate(self, node: NodeRecord, *, lost: bool) -> None:
        def drop() -> None:
            (self.spool / "ctl").mkdir(parents=True, exist_ok=True)
            (self.spool / "ctl" / f"{node.id}.drop").touch()
        await asyncio.to_thread(drop)
