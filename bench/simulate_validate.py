"""Checked against reality: `coord simulate` predicts a small real job's run.

Runs examples/elastic on 3 local nodes (restart mode, min 2) twice, under the same coordd
settings:
  1. calibration, no failures: measures the workload model on this machine: each node's boot
     (the provider asked -> its agent registered; their median and spread), the workers' cold
     start (generation started -> its first step, less that step), the step time, and a
     graceful stop's teardown (last step -> every worker exited);
  2. an event list, at given seconds after the submission: a SIGKILL of one node, a spot
     notice (the local provider's metadata service announces it: `coord debug interrupt`),
     then every node SIGKILLed at once. Nodes are named by slot as the simulator counts
     them: slot i is the i-th node launched, a replacement takes the lowest free slot.
Then simulates run 2 from the same event list (the times each was injected) with the measured
model and the same coordd settings, through coord's real reconciler, and prints predicted
against measured time to finish (submission -> last step) and steps lost (steps trained
again), met / not met at 10 %.

The job keeps no periodic checkpoint (--ckpt-every beyond its last step): its durable state
is what each graceful stop commits (the notice's drain, scale-up restarts), so losing every
node at once loses every step since, and that count checks the simulated clock. A lone node's
loss costs no step (the survivors resume from a peer's in-memory snapshot).

    .venv/bin/python bench/simulate_validate.py     # about 3 minutes; docs/simulate.md
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import shutil
import sqlite3
import statistics
import sys
import tempfile
import textwrap
import time
from pathlib import Path

from contract import events as ev
from contract.spec import load_job_file
from contract.states import JobState
from coordinator.localcluster import LocalCoordd, start_coordd, wait_for
from coordinator.settings import CoorddSettings
from simulator.coord import CoordRun
from simulator.model import WorkloadModel
from simulator.policy import Result
from simulator.traces import Trace, TraceEvent, TraceMeta
from trainer.elastic import committed_history

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "elastic"
TOLERANCE = 0.10
STEP_SLEEP = 0.1  # stands for each step's compute (train.py --step-sleep)
# coordd's settings for both runs and for the simulation (a scale-up sooner than the
# default's 30 s keeps the run short).
SETTINGS = {"stop_grace_s": 3.0, "scale_up_settle_s": 1.0, "scale_up_min_runtime_s": 12.0}
# (seconds after the submission, kind, node slot; None: every node)
EVENTS = [(22.0, "hard_failure", 2), (48.0, "spot_notice", 0), (88.0, "hard_failure", None)]
GONE = ("LOST", "GONE")


def job_file(work: Path, steps: int) -> Path:
    job = work / "job"
    shutil.copytree(EXAMPLE, job, ignore=shutil.ignore_patterns("checkpoints"))
    (job / "job.toml").write_text(textwrap.dedent(f"""
        name = "simulate-validate"
        run = "python train.py --steps {steps} --ckpt-every {steps + 1} --step-sleep {STEP_SLEEP}"
        max_restarts = 2
        [nodes]
        count = 3
        min = 2
        [fault_tolerance]
        mode = "restart"
    """))
    return job / "job.toml"


def coordd(state: Path) -> LocalCoordd:
    return start_coordd(state, env={f"COORDD_{k.upper()}": str(v) for k, v in SETTINGS.items()})


def job_nodes(cluster: LocalCoordd, job_id: str) -> list[tuple[str, str, float]]:
    """(id, state, created_at) of the job's nodes, in launch order."""
    with sqlite3.connect(cluster.state_dir / "coord.db") as db:
        return db.execute("select id, state, created_at from nodes where job_id=? "
                          "order by created_at, rowid", (job_id,)).fetchall()


def run_job(cluster: LocalCoordd, steps: int, work: Path, during=None) -> tuple:  # noqa: ANN001
    """Submit the job, call `during(job_id, submitted)`, wait for it to succeed; returns
    (job id, submission time, its events)."""
    with cluster.client() as client:
        submitted = time.time()
        job = client.submit(job_file(work, steps))
        if during is not None:
            during(job.id, submitted)
        final = client.wait(job.id, timeout=300)
        if final.state != JobState.SUCCEEDED:
            sys.exit(f"the job ended {final.state}: {final.reason} (see {cluster.state_dir})")
        return job.id, submitted, list(client.watch(job.id, follow=False))


# -- 1. the model, measured ---------------------------------------------------------------

def calibrate(work: Path, steps: int) -> WorkloadModel:
    cluster = coordd(work / "state")
    try:
        job_id, _, events = run_job(cluster, steps, work)
        nodes = job_nodes(cluster, job_id)
    finally:
        cluster.stop()
    lineage = committed_history(cluster.state_dir / "checkpoints" / job_id).lineage
    step_s = (lineage[-1].t - lineage[10].t) / (lineage[-1].step - lineage[10].step)
    started = next(e.time.timestamp() for e in events if e.kind == ev.GENERATION_STARTED)
    ended = next(e.time.timestamp() for e in events
                 if e.kind == ev.STATE and e.data.get("new") == "SUCCEEDED")
    boots = boot_times(cluster, nodes)
    model = WorkloadModel(
        step_time_s=step_s, scaling="steps", save_s=0, restore_s=0,
        worker_cold_start_s=max(0.0, lineage[0].t - started - step_s),
        stop_s=ended - lineage[-1].t,
        boot_median_s=statistics.median(boots),
        boot_spread=statistics.pstdev(math.log(b) for b in boots),
        # A SIGKILLed local node's stream drops at once (its kernel closes the socket), and
        # its peers' collectives fail as fast; the local provider never takes a noticed node.
        detect_s=0.0, peer_fail_s=0.1, notice_lead_s=120)
    print(f"calibration: step {step_s:.4f} s, cold start {model.worker_cold_start_s:.2f} s, "
          f"stop {model.stop_s:.2f} s, boots {', '.join(f'{b:.2f}' for b in boots)} s")
    return model


def boot_times(cluster: LocalCoordd, nodes: list[tuple[str, str, float]]) -> list[float]:
    """Each node's record created (the provider asked) -> its agent registered (coordd's
    log: `node.state` to READY, cause registered)."""
    registered: dict[str, float] = {}
    for line in cluster.log_path.read_text().splitlines():
        entry = json.loads(line) if line.startswith("{") else {}
        if entry.get("event") == "node.state" and entry.get("cause") == "registered":
            at = dt.datetime.fromisoformat(entry["timestamp"]).timestamp()
            registered.setdefault(entry["node"], at)
    return [registered[n] - created for n, _, created in nodes if n in registered]


# -- 2. the run with the event list ---------------------------------------------------------

class Slots:
    """The job's nodes by slot, as the simulated cloud numbers them."""

    def __init__(self) -> None:
        self.of: dict[int, str] = {}

    def refresh(self, nodes: list[tuple[str, str, float]]) -> None:
        state = {node_id: s for node_id, s, _ in nodes}
        self.of = {slot: n for slot, n in self.of.items() if state.get(n) not in GONE}
        for node_id, s, _ in nodes:
            if node_id not in self.of.values() and s not in GONE:
                self.of[min(set(range(len(self.of) + 1)) - set(self.of))] = node_id


def inject(cluster: LocalCoordd, job_id: str, submitted: float) -> list[TraceEvent]:
    """Each of EVENTS at its time; returns them as injected (their actual times)."""
    injected, slots = [], Slots()
    for at, kind, slot in EVENTS:
        wait_for(lambda at=at: time.time() - submitted >= at, at + 5, interval=0.01)
        slots.refresh(job_nodes(cluster, job_id))
        targets = [slots.of[slot]] if slot is not None else list(slots.of.values())
        for node_id in targets:
            if kind == "hard_failure":
                cluster.kill_node(node_id)
            elif (result := cluster.cli("debug", "interrupt", node_id)).returncode:
                sys.exit(f"coord debug interrupt: {result.stderr}")
        t = time.time() - submitted  # the CLI's start-up comes before its notice
        print(f"  {t:6.2f} s  {kind} {', '.join(targets)}")
        injected.append(TraceEvent(time=round(t, 3), kind=kind,
                                   **({"node": slot} if slot is not None else {"zone": "z0"})))
    return injected


def measure(work: Path, steps: int) -> tuple[float, int, int, list[TraceEvent]]:
    """(time to finish, steps lost, generations, the events as injected)."""
    cluster, injected = coordd(work / "state"), []
    try:
        job_id, submitted, events = run_job(
            cluster, steps, work, lambda job_id, t0: injected.extend(inject(cluster, job_id, t0)))
    finally:
        cluster.stop()
    history = committed_history(cluster.state_dir / "checkpoints" / job_id)
    generations = sum(e.kind == ev.GENERATION_STARTED for e in events)
    return history.lineage[-1].t - submitted, len(history.lost), generations, injected


# -- 3. the prediction ---------------------------------------------------------------------

def predict(model: WorkloadModel, events: list[TraceEvent], work: Path) -> Result:
    spec = load_job_file(job_file(work, model.steps_to_finish))
    trace = Trace("simulate_validate", tuple(events), TraceMeta(zones=1))
    return CoordRun("coord-restart", spec, "restart", model, trace, seed=0,
                    settings=CoorddSettings(**SETTINGS)).run(3600)


def row(name: str, predicted: float, measured: float, tolerance: float | None) -> bool:
    met = tolerance is None or abs(predicted - measured) <= tolerance * abs(measured)
    verdict = "" if tolerance is None else "met" if met else "NOT MET"
    print(f"| {name} | {predicted:,.1f} | {measured:,.1f} | {verdict} |")
    return met


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=700)
    p.add_argument("--calibration-steps", type=int, default=200)
    p.add_argument("--keep", action="store_true", help="keep the runs' directories")
    a = p.parse_args()
    work, began = Path(tempfile.mkdtemp(prefix="simulate-validate-")), time.time()
    model = calibrate(work / "calibration", a.calibration_steps)
    model = model.model_copy(update={"steps_to_finish": a.steps,
                                     "checkpoint_every_steps": a.steps + 1})
    took, lost, generations, injected = measure(work / "events", a.steps)
    predicted = predict(model, injected, work / "prediction")
    print("\n| figure | predicted | measured | within 10 % |\n|---|---|---|---|")
    ok = [row("time to finish (s)", predicted.time_to_finish_s or math.inf, took, TOLERANCE),
          row("steps lost", predicted.steps_lost, lost, TOLERANCE)]
    row("generations", predicted.reformations + 1, generations, None)
    print(f"\nbench took {time.time() - began:.0f} s" + (f"; kept {work}" if a.keep else ""))
    if not a.keep:
        shutil.rmtree(work, ignore_errors=True)
    sys.exit(0 if all(ok) else 1)


if __name__ == "__main__":
    main()
