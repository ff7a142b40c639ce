"""How many agents one coordd holds, and how fast it re-forms a large job (issue 18).

    .venv/bin/python bench/scale.py                      # N = 1000
    .venv/bin/python bench/scale.py --n 1000,5000,10000  # the full table (a quiet machine)

For each N: a real coordd (TLS, SQLite in a temp dir, the `sim` provider), N simulated agents
connecting at once from a few load-generator processes, then the figures below, each with
its target and met / not met. Prints a table per N and writes every figure to --json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.scalerig import Rig, cpu_seconds, rss_kib  # noqa: E402
from contract.spec import JobSpec  # noqa: E402
from coordinator.client.sdk import AsyncClient  # noqa: E402
from coordinator.localcluster import wait_for  # noqa: E402
from coordinator.settings import CoorddSettings  # noqa: E402

AGENTS_PER_GENERATOR = 2500
DEFAULTS = CoorddSettings.model_fields


def spec(name: str, nodes: int, mode: str, nproc: int = 8) -> JobSpec:
    return JobSpec.model_validate({
        "name": name, "run": "true", "nproc_per_node": nproc, "max_restarts": 100,
        "nodes": {"count": nodes, "min": max(1, nodes // 2)},
        "resources": {"provider": "sim"}, "fault_tolerance": {"mode": mode}})


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class Scale:
    def __init__(self, rig: Rig, n: int, args: argparse.Namespace):
        self.rig, self.n, self.args = rig, n, args
        self.fig: dict[str, float] = {"agents": n}

    def burst(self) -> None:
        """N agents connect at once (what a coordd restart or a network blip causes)."""
        self.fig["rss_idle_kib"] = rss_kib(self.rig.pid)
        per = -(-self.n // max(1, -(-self.n // AGENTS_PER_GENERATOR)))
        left, i = self.n, 0
        while left > 0:
            self.rig.add_generator(f"pool{i}", min(per, left), self.args.log_rate)
            left, i = left - per, i + 1
        wait_for(lambda: self.rig.total("registered") >= self.n, 120, interval=0.2,
                 what=f"{self.n} agents to register")
        stats = self.rig.stats()
        started = min(s["started"] for s in stats)
        self.fig["burst_ready_s"] = max(s["last_registered"] for s in stats) - started
        self.fig["burst_lost"] = self.rig.count_state("LOST")
        self.fig["failed_attempts"] = sum(sum(s["failed_attempts"].values()) for s in stats)

    def steady(self) -> None:
        time.sleep(self.args.settle)
        rig, window = self.rig, self.args.window
        cpu0, gen0, commits0 = cpu_seconds(rig.pid), rig.generator_cpu(), \
            rig.metric("coord_db_commit_seconds_count")
        t0 = time.time()
        time.sleep(window)
        elapsed = time.time() - t0
        self.fig["coordd_cores"] = (cpu_seconds(rig.pid) - cpu0) / elapsed
        self.fig["generator_cores"] = (rig.generator_cpu() - gen0) / elapsed
        self.fig["commits_per_s"] = (rig.metric("coord_db_commit_seconds_count")
                                     - commits0) / elapsed
        self.fig["rss_kib"] = rss_kib(rig.pid)
        self.fig["rss_mib"] = self.fig["rss_kib"] / 1024
        self.fig["kib_per_agent"] = (self.fig["rss_kib"] - self.fig["rss_idle_kib"]) / self.n
        rtts = [rtt for s in rig.stats() for at, rtt in s["rtt"] if at >= t0]
        self.fig["rtt_samples"] = len(rtts)
        for name, q in (("p50", 0.5), ("p99", 0.99), ("max", 1.0)):
            self.fig[f"rtt_{name}_ms"] = percentile(rtts, q) * 1000
        self.fig["event_loop_lag_mean_ms"] = 1000 * rig.metric(
            "coord_event_loop_lag_seconds_sum") / max(1.0, rig.metric(
                "coord_event_loop_lag_seconds_count"))

    def loss_detection(self) -> None:
        for action, key in (("silent", "silent_to_lost_s"), ("drop", "dropped_to_lost_s")):
            node = f"pool0-{'00000' if action == 'silent' else '00001'}"
            self.rig.ctl(node, action)
            acted = self.rig.acted_at(node, action)
            self.fig[key] = self.rig.wait_state(node, "LOST") - acted

    async def job(self, mode: str) -> None:
        """The large job: submit -> every StartWorkers; one node lost -> every survivor told."""
        size, rig = self.args.job_nodes, self.rig
        async with AsyncClient(rig.coordd.address, rig.coordd.token,
                               ca=rig.coordd.ca_path) as client:
            submitted = time.time()
            job = await client.submit(spec(f"big-{mode}", size, mode), workdir=rig.workdir)
            first = await self._all_told(job.id, "starts", 1, size, 60)
            if mode == "restart":
                self.fig["submit_to_all_started_s"] = first["last"] - submitted
            await _until(lambda: client.get(job.id), lambda j: j.state == "RUNNING", 60)
            victim = (await client.get(job.id)).node_ids[-1]
            rig.ctl(victim, "drop")
            detected = await asyncio.to_thread(rig.wait_state, victim, "LOST")
            kind = "starts" if mode == "restart" else "reconfigures"
            told = await self._all_told(job.id, kind, 2, size - 1, 60)
            self.fig[f"loss_to_survivors_told_s_{mode}"] = told["last"] - detected
            if mode == "restart":
                await self.spot_notices(client, job.id, size - 1)
            await client.cancel(job.id, "benchmark done")

    async def spot_notices(self, client: AsyncClient, job_id: str, live: int) -> None:
        """50 nodes announce a spot interruption within one second."""
        job = await client.get(job_id)
        before = job.generation
        for node in job.node_ids[:50]:
            self.rig.ctl(node, "notice")
            await asyncio.sleep(1 / 50)
        last = time.time()
        told = await self._all_told(job_id, "starts", before + 1, live - 50, 60)
        self.fig["spot50_to_survivors_told_s"] = told["last"] - last
        await asyncio.sleep(1.0)
        self.fig["spot50_generations"] = (await client.get(job_id)).generation - before

    async def many_jobs(self) -> None:
        """100 jobs of 10 nodes submitted together -> every StartWorkers received."""
        rig = self.rig
        async with AsyncClient(rig.coordd.address, rig.coordd.token,
                               ca=rig.coordd.ca_path) as client:
            started = time.time()
            jobs = await asyncio.gather(*(client.submit(spec(f"small{i}", 10, "restart", 1),
                                                        workdir=rig.workdir)
                                          for i in range(self.args.jobs)))
            told = [await self._all_told(j.id, "starts", 1, 10, 120) for j in jobs]
            self.fig["jobs100_all_started_s"] = max(t["last"] for t in told) - started
            await asyncio.gather(*(client.cancel(j.id, "benchmark done") for j in jobs))

    async def _all_told(self, job_id: str, kind: str, after_gen: int, count: int,
                        timeout: float) -> dict:
        """The first generation >= after_gen whose message reached `count` nodes."""
        def reached():
            for key, entry in sorted(self.rig.table(kind, f"{job_id}/").items(),
                                     key=lambda kv: int(kv[0].rpartition("/")[2])):
                if int(key.rpartition("/")[2]) >= after_gen and entry["count"] >= count:
                    return entry
            return None
        return await asyncio.to_thread(wait_for, reached, timeout, 0.05,
                                       f"{job_id}: {kind} to {count} nodes")


async def _until(call, check, timeout: float):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check(value := await call()):
            return value
        await asyncio.sleep(0.1)
    raise TimeoutError("condition not reached")


def targets(fig: dict) -> list[tuple[str, str, str, bool | None]]:
    """(figure, value, target, met) rows."""
    hb_timeout = DEFAULTS["heartbeat_timeout_s"].default
    grace = DEFAULTS["reconnect_grace_s"].default
    get = fig.get

    def row(name, key, fmt, limit=None, label="", cmp=lambda v, l: v <= l):
        value = get(key)
        shown = "-" if value is None else fmt.format(value)
        met = None if value is None or limit is None else cmp(value, limit)
        return (name, shown, label, met)
    return [
        row("coordd CPU, steady (cores)", "coordd_cores", "{:.2f}", 1.0, "<= 1"),
        row("load generators CPU (cores)", "generator_cores", "{:.2f}"),
        row("coordd RSS (MiB)", "rss_mib", "{:.0f}"),
        row("memory per agent (KiB)", "kib_per_agent", "{:.1f}", 50, "<= 50"),
        row("heartbeat RTT p50 (ms)", "rtt_p50_ms", "{:.1f}"),
        row("heartbeat RTT p99 (ms)", "rtt_p99_ms", "{:.1f}", 100, "< 100",
            lambda v, l: v < l),
        row("heartbeat RTT max (ms)", "rtt_max_ms", "{:.1f}"),
        row("event-loop lag, mean (ms)", "event_loop_lag_mean_ms", "{:.1f}"),
        row("SQLite commits/s, steady", "commits_per_s", "{:.0f}"),
        row("silent agent -> LOST (s)", "silent_to_lost_s", "{:.2f}", hb_timeout + 1,
            f"<= {hb_timeout + 1:g}"),
        row("dropped stream -> LOST (s)", "dropped_to_lost_s", "{:.2f}", grace + 0.5,
            f"<= {grace + 0.5:g}"),
        row("N at once -> all READY (s)", "burst_ready_s", "{:.2f}", 15, "<= 15"),
        row("  ... marked LOST in the burst", "burst_lost", "{:.0f}", 0, "0"),
        row("  ... failed stream attempts (retried)", "failed_attempts", "{:.0f}"),
        row("big job: submit -> all StartWorkers (s)", "submit_to_all_started_s", "{:.2f}",
            5, "<= 5"),
        row("big job: loss -> survivors told, restart (s)",
            "loss_to_survivors_told_s_restart", "{:.2f}", 1, "<= 1"),
        row("big job: loss -> survivors told, in-process (s)",
            "loss_to_survivors_told_s_inprocess", "{:.2f}", 1, "<= 1"),
        row("50 spot notices in 1 s -> survivors told (s)", "spot50_to_survivors_told_s",
            "{:.2f}"),
        row("  ... generations it took", "spot50_generations", "{:.0f}"),
        row("100 jobs x 10 nodes -> all started (s)", "jobs100_all_started_s", "{:.2f}"),
    ]


def show(fig: dict) -> None:
    print(f"\nN = {fig['agents']} agents (job of {fig.get('job_nodes')} nodes)")
    print(f"{'figure':48} {'value':>10}  {'target':>8}  met")
    for name, value, target, met in targets(fig):
        verdict = "" if met is None else ("met" if met else "NOT MET")
        print(f"{name:48} {value:>10}  {target:>8}  {verdict}")


async def run_one(n: int, args: argparse.Namespace) -> dict:
    with tempfile.TemporaryDirectory(prefix="coord-scale-") as tmp:
        rig = Rig(Path(tmp))
        try:
            scale = Scale(rig, n, args)
            scale.fig["job_nodes"] = args.job_nodes
            spy = args.profile and rig.profile(Path(f"{args.profile}-{n}.txt"))
            scale.burst()
            scale.steady()
            scale.loss_detection()
            if args.job_nodes:
                await scale.job("restart")
                await scale.job("inprocess")
            if args.jobs:
                await scale.many_jobs()
        finally:
            if spy:
                spy.send_signal(signal.SIGINT)
                spy.wait(30)
            rig.close()
    return scale.fig


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", default="1000", help="agent counts, comma-separated")
    parser.add_argument("--job-nodes", type=int, default=1000, help="the large job's nodes")
    parser.add_argument("--jobs", type=int, default=100, help="10-node jobs submitted at once")
    parser.add_argument("--log-rate", type=float, default=1.0,
                        help="log lines/s per agent running workers")
    parser.add_argument("--settle", type=float, default=3.0)
    parser.add_argument("--window", type=float, default=10.0, help="steady-state window (s)")
    parser.add_argument("--json", type=Path, default=Path("scale.json"))
    parser.add_argument("--profile", type=Path, default=None,
                        help="record coordd with py-spy into PROFILE-N.txt (collapsed stacks)")
    args = parser.parse_args()
    results = []
    for n in [int(x) for x in args.n.split(",")]:
        fig = asyncio.run(run_one(n, args))
        show(fig)
        results.append(fig)
    args.json.write_text(json.dumps({"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                                     "machine": f"{platform.node()} {platform.processor()}",
                                     "cpus": len(__import__("os").sched_getaffinity(0)),
                                     "results": results}, indent=1))
    print(f"\nwritten to {args.json}; median coordd cores "
          f"{statistics.median(r.get('coordd_cores', 0) for r in results):.2f}")


if __name__ == "__main__":
    main()
