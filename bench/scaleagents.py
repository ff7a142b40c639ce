"""A load generator: many simulated coord agents in one process, each on its own real TLS
gRPC connection and `AgentService.Connect` stream, speaking the protocol a real agent speaks
(agent/connection.py): register with node resources, heartbeat at the interval coordd gives,
apply acks and replay what is unacknowledged after a reconnect, answer StartWorkers (each
worker reported running) and StopWorkers (each reported exited), and send log lines. No
worker runs.

Agents come from `--pool N` (hand-started nodes) and from the `sim` provider's spool folder
(coordinator/providers/sim.py): a launch file there names node ids to bring up, and is
claimed by exactly one generator (rename). Control files `SPOOL/ctl/NODE.ACTION` (silent,
drop, notice) let a benchmark make one agent go quiet, cut its stream or announce a spot
interruption. Every second the generator writes what it saw to `SPOOL/stats/NAME.json`.

    python bench/scaleagents.py --address HOST:PORT --token T --ca ca.pem --spool DIR --pool 500
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import random
import time
import uuid
from pathlib import Path

import grpc

from contract.transport import ca_bytes, call_metadata, open_channel
from coord.v1 import agent_pb2, agent_pb2_grpc, types_pb2

RUNNING, EXITED = agent_pb2.WORKER_PHASE_RUNNING, agent_pb2.WORKER_PHASE_EXITED
RESOURCES = types_pb2.Resources(cpus=96, gpus=8, memory_bytes=1 << 40, software=["torchft"])
CTL_POLL_S = 0.05
RTT_SAMPLES = 50_000
# An agent event for no job: coordd records it nowhere, it only acknowledges it.
PROBE = "sim.probe"


class Stats:
    """What this process saw, written as JSON for the benchmark."""

    def __init__(self) -> None:
        self.rtt: collections.deque[tuple[float, float]] = collections.deque(maxlen=RTT_SAMPLES)
        self.registered: dict[str, float] = {}   # node -> when `registered` last arrived
        self.failed_attempts: collections.Counter[str] = collections.Counter()
        self.fenced = 0
        self.starts: dict[str, dict] = {}        # "job/gen" -> count, first, last arrival
        self.reconfigures: dict[str, dict] = {}
        self.acted: dict[str, float] = {}        # "node.action" -> when it was done
        self.connected = 0
        self.started = time.time()

    @staticmethod
    def mark(table: dict[str, dict], key: str) -> None:
        now = time.time()
        entry = table.setdefault(key, {"count": 0, "first": now, "last": now})
        entry["count"] += 1
        entry["last"] = now

    def dump(self, path: Path, agents: int) -> None:
        cpu = os.times()
        body = dict(time=time.time(), started=self.started, pid=os.getpid(), cpu_s=cpu.user + cpu.system,
                    agents=agents, connected=self.connected,
                    registered=len(self.registered),
                    last_registered=max(self.registered.values(), default=0.0),
                    failed_attempts=dict(self.failed_attempts), fenced=self.fenced,
                    starts=self.starts, reconfigures=self.reconfigures, acted=self.acted,
                    rtt=list(self.rtt))
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(body))
        tmp.replace(path)


class SimAgent:
    def __init__(self, node_id: str, gen: Generator):
        self.node_id, self.gen = node_id, gen
        self.incarnation = uuid.uuid4().hex
        self.seq = 0
        self.unacked: dict[int, agent_pb2.AgentMessage] = {}
        self.probes: dict[int, float] = {}
        self.running: dict[str, tuple[int, list[int]]] = {}  # job -> generation, ranks
        self.queue: asyncio.Queue = asyncio.Queue()
        self.silent = False
        self.stopped = False
        self.call = None
        self.channel = open_channel(gen.address, gen.ca_pem, gen.insecure, options=[
            ("grpc.keepalive_time_ms", 10_000), ("grpc.use_local_subchannel_pool", 1)])
        self.stub = agent_pb2_grpc.AgentServiceStub(self.channel)

    def put(self, message: agent_pb2.AgentMessage, probe: bool = False) -> None:
        self.seq += 1
        message.seq = self.seq
        self.unacked[self.seq] = message
        if probe:
            self.probes[self.seq] = time.perf_counter()
        self.queue.put_nowait(message)

    async def run(self) -> None:
        delay = 0.2
        while not self.stopped:
            try:
                await self._session()
                delay = 0.2
            except grpc.aio.AioRpcError as exc:
                self.gen.stats.failed_attempts[exc.code().name] += 1
            if self.stopped:
                break
            await asyncio.sleep(random.uniform(0, delay))
            delay = min(delay * 2, 5.0)
        await self.channel.close()

    async def _session(self) -> None:
        self.queue = asyncio.Queue()
        for message in self.unacked.values():
            self.queue.put_nowait(message)
        register = agent_pb2.Register(
            node_id=self.node_id, host="127.0.0.1", resources=RESOURCES, agent_version="sim",
            free_port=29500, incarnation=self.incarnation,
            running=[agent_pb2.RunningWorker(job_id=job, generation=gen, rank=rank, pid=1)
                     for job, (gen, ranks) in self.running.items() for rank in ranks])
        self.call = self.stub.Connect(self._requests(register),
                                      metadata=call_metadata(self.gen.token))
        beat = None
        self.gen.stats.connected += 1
        try:
            async for message in self.call:
                if message.WhichOneof("body") == "registered":
                    self.gen.stats.registered[self.node_id] = time.time()
                    beat = asyncio.create_task(self._heartbeat(
                        message.registered.heartbeat_interval_s))
                else:
                    self._obey(message)
        finally:
            self.gen.stats.connected -= 1
            if beat:
                beat.cancel()
        if not self.stopped:  # coordd ended the stream: it fenced or released this node
            self.gen.stats.fenced += 1
            self.stopped = True

    async def _requests(self, register: agent_pb2.Register):
        yield agent_pb2.AgentMessage(register=register)
        queue = self.queue
        while True:
            yield await queue.get()

    async def _heartbeat(self, interval: float) -> None:
        beats = random.randrange(self.gen.probe_every)  # probes spread over the agents
        while True:
            if not self.silent:
                self.queue.put_nowait(agent_pb2.AgentMessage(
                    heartbeat=agent_pb2.Heartbeat(free_port=29500)))
                beats += 1
                if beats % self.gen.probe_every == 0:  # a tracked message: its ack is the RTT
                    self.put(agent_pb2.AgentMessage(event=agent_pb2.AgentEvent(
                        kind=PROBE)), probe=True)
                self._logs(interval)
            await asyncio.sleep(interval)

    def _logs(self, interval: float) -> None:
        lines = self.gen.log_rate * interval
        count = int(lines) + (random.random() < lines % 1)
        if not count or not self.running:
            return
        job, (generation, ranks) = next(iter(self.running.items()))
        self.put(agent_pb2.AgentMessage(logs=agent_pb2.LogBatch(lines=[
            types_pb2.LogLine(job_id=job, generation=generation, node_id=self.node_id,
                              rank=ranks[0], seq=self.seq * 1000 + i, text=f"step {i}")
            for i in range(count)])))

    def _obey(self, message: agent_pb2.CoordinatorMessage) -> None:
        match message.WhichOneof("body"):
            case "ack":
                self._ack(message.ack.upto)
            case "start":
                start = message.start
                Stats.mark(self.gen.stats.starts, f"{start.job_id}/{start.generation}")
                ranks = [w.rank for w in start.workers]
                self.running[start.job_id] = (start.generation, ranks)
                for rank in ranks:
                    self._report(start.job_id, start.generation, rank, RUNNING)
            case "stop":
                stop = message.stop
                generation, ranks = self.running.get(stop.job_id, (None, []))
                if generation is not None and generation <= stop.generation:
                    del self.running[stop.job_id]
                    for rank in ranks:
                        self._report(stop.job_id, generation, rank, EXITED, -15)
            case "reconfigure":
                key = f"{message.reconfigure.job_id}/{message.reconfigure.generation}"
                Stats.mark(self.gen.stats.reconfigures, key)
            case "drain":
                self.stopped = True
                self.call.cancel()

    def _ack(self, upto: int) -> None:
        now = time.perf_counter()
        for seq in [s for s in self.unacked if s <= upto]:
            del self.unacked[seq]
            if (sent := self.probes.pop(seq, None)) is not None:
                self.gen.stats.rtt.append((time.time(), now - sent))

    def _report(self, job_id: str, generation: int, rank: int, phase: int,
                code: int = 0) -> None:
        self.put(agent_pb2.AgentMessage(worker_state=agent_pb2.WorkerStateChange(
            job_id=job_id, generation=generation, rank=rank, phase=phase, exit_code=code,
            pid=1)))

    def act(self, action: str) -> None:
        if action == "silent":
            self.silent = True
        elif action == "drop":  # the stream breaks and the host never comes back
            self.stopped = True
            if self.call:
                self.call.cancel()
        elif action == "notice":
            self.put(agent_pb2.AgentMessage(leaving=agent_pb2.Leaving(
                reason="spot interruption notice (simulated)")))
        self.gen.stats.acted[f"{self.node_id}.{action}"] = time.time()


class Generator:
    def __init__(self, args: argparse.Namespace):
        self.address, self.token = args.address, args.token
        self.ca_pem, self.insecure = ca_bytes(args.ca), args.insecure
        self.spool, self.name = args.spool, args.name
        self.log_rate, self.probe_every = args.log_rate, max(1, args.probe_every)
        self.stats = Stats()
        self.agents: dict[str, SimAgent] = {}
        self.tasks: set[asyncio.Task] = set()

    def start(self, node_id: str) -> None:
        if node_id in self.agents:
            return
        agent = self.agents[node_id] = SimAgent(node_id, self)
        task = asyncio.create_task(agent.run())
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def serve(self, pool: int, prefix: str) -> None:
        for dirname in ("launch", "ctl", "stats", "claimed"):
            (self.spool / dirname).mkdir(parents=True, exist_ok=True)
        for i in range(pool):
            self.start(f"{prefix}-{i:05d}")
        dumped = 0.0
        while True:
            self._claim_launches()
            self._apply_controls()
            if time.monotonic() - dumped > 1.0:
                self.stats.dump(self.spool / "stats" / f"{self.name}.json", len(self.agents))
                dumped = time.monotonic()
            await asyncio.sleep(CTL_POLL_S)

    def _claim_launches(self) -> None:
        for path in sorted((self.spool / "launch").glob("*.json")):
            mine = self.spool / "claimed" / f"{self.name}-{path.name}"
            try:
                path.rename(mine)  # exactly one generator wins each launch file
            except FileNotFoundError:
                continue
            for node_id in json.loads(mine.read_text())["nodes"]:
                self.start(node_id)

    def _apply_controls(self) -> None:
        for path in (self.spool / "ctl").iterdir():
            node_id, _, action = path.name.rpartition(".")
            if agent := self.agents.get(node_id):
                agent.act(action)
                path.unlink(missing_ok=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--address", required=True)
    parser.add_argument("--token", required=True, help="an agent join token")
    parser.add_argument("--ca", default=None, help="coordd's CA certificate (PEM file)")
    parser.add_argument("--insecure", action="store_true")
    parser.add_argument("--spool", type=Path, required=True)
    parser.add_argument("--name", default=f"gen-{os.getpid()}")
    parser.add_argument("--pool", type=int, default=0, help="hand-started agents to run")
    parser.add_argument("--prefix", default=f"sim-{os.getpid()}")
    parser.add_argument("--log-rate", type=float, default=1.0,
                        help="log lines per second per agent that runs workers")
    parser.add_argument("--probe-every", type=int, default=5,
                        help="every this many heartbeats an agent sends a tracked probe, "
                             "whose ack gives the round trip")
    args = parser.parse_args()
    asyncio.run(Generator(args).serve(args.pool, args.prefix))


if __name__ == "__main__":
    main()
