"""Recovery after a machine loss: coord against torchrun elastic, on the same job.

Runs examples/elastic/train.py on 3 single-process "nodes" on loopback, twice:
  * torchrun --nnodes=2:3 --nproc-per-node=1 --rdzv-backend=c10d --max-restarts=3
    (three launchers, each in its own session);
  * coord, with three nodes from the local provider;
SIGKILLs one node that does not host the rendezvous (its launcher or agent, and its worker)
at the same step, and prints for each: seconds from the kill to the next completed step,
steps lost (done, then done again after the resume), and the ratio coord / torchrun.

    .venv/bin/python bench/recovery.py                 # all three, ~6 minutes
    .venv/bin/python bench/recovery.py --only coord
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

from coordinator.localcluster import start_coordd, wait_for
from coordinator.providers.procs import signal_tree
from coordinator.sdk import Client
from trainer.elastic import committed_history

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "elastic"


@dataclass
class Result:
    name: str
    recovery_s: float | None  # kill -> first step completed after it; None: never
    steps_lost: int
    finished: bool


def train_args(a: argparse.Namespace) -> str:
    return (f"--steps {a.steps} --ckpt-every {a.ckpt_every} --step-sleep {a.step_sleep} "
            f"--global-batch {a.global_batch}")


def wait_step(ckpt: Path, step: int, timeout: float) -> None:
    def at() -> bool:
        lineage = committed_history(ckpt).lineage
        return bool(lineage) and lineage[-1].step >= step
    wait_for(at, timeout, interval=0.01, what=f"step {step}")


def measure(name: str, ckpt: Path, killed_at: float, finished: bool) -> Result:
    """Recovery ends at the first step completed by a generation that began after the kill
    (a step whose all-reduce finished just before the kill does not count)."""
    history = committed_history(ckpt)
    records = sorted(history.lineage + history.lost, key=lambda r: r.t)
    at_kill = max((r.generation for r in records if r.t <= killed_at), default=0)
    after = [r.t for r in history.lineage if r.t > killed_at and r.generation > at_kill]
    recovery = min(after) - killed_at if after else None
    return Result(name, recovery, len(history.lost), finished)


def run_torchrun_default(a: argparse.Namespace, work: Path) -> Result:
    return run_torchrun(a, work, tuned=False)


def run_torchrun_tuned(a: argparse.Namespace, work: Path) -> Result:
    return run_torchrun(a, work, tuned=True)


def run_torchrun(a: argparse.Namespace, work: Path, tuned: bool) -> Result:
    ckpt = work / "ckpt"
    port = 29400 + os.getpid() % 500
    # torchrun gives no generation: number each restart so lost steps are counted the same way.
    script = (f"COORD_GENERATION=$((TORCHELASTIC_RESTART_COUNT+1)) exec {sys.executable} "
              f"train.py {train_args(a)}")
    env = {**os.environ, "COORD_CHECKPOINT_DIR": str(ckpt), "PYTHONUNBUFFERED": "1",
           **({"TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1"} if tuned else {})}
    rdzv_conf = (["--rdzv-conf", "last_call_timeout=1,keep_alive_interval=1,"
                  "keep_alive_max_attempt=2"] if tuned else [])
    launchers = []
    for i in range(3):
        cmd = [str(Path(sys.executable).parent / "torchrun"), "--nnodes=2:3",
               "--nproc-per-node=1", "--rdzv-backend=c10d",
               f"--rdzv-endpoint=127.0.0.1:{port}", "--rdzv-id=bench", "--max-restarts=3",
               *rdzv_conf, "--no-python", "bash", "-c", script]
        log = open(work / f"launcher{i}.log", "wb")
        launchers.append(subprocess.Popen(cmd, cwd=work, env=env, stdout=log, stderr=log,
                                          start_new_session=True))
        if i == 0:
            time.sleep(1.0)  # launcher 0 hosts the rendezvous store
    try:
        wait_step(ckpt, a.kill_at, 120)
        killed_at = time.time()
        signal_tree(launchers[2].pid, signal.SIGKILL)
        finished = _wait_all(launchers[:2], a.give_up_s)
    finally:
        for p in launchers:
            signal_tree(p.pid, signal.SIGKILL)
    return measure("torchrun (tuned)" if tuned else "torchrun", ckpt, killed_at, finished)


def _wait_all(procs: list[subprocess.Popen], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    for p in procs:
        try:
            p.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            return False
    return all(p.returncode == 0 for p in procs)


def run_coord(a: argparse.Namespace, work: Path) -> Result:
    job_dir = work / "job"
    shutil.copytree(EXAMPLE, job_dir)
    (job_dir / "job.toml").write_text(textwrap.dedent(f"""
        name = "bench-recovery"
        run = "python train.py {train_args(a)}"
        [nodes]
        count = 3
        min = 2
    """))
    cluster = start_coordd(work / "state")
    try:
        with Client(cluster.address, cluster.token) as client:
            job = client.submit(job_dir / "job.toml")
            ckpt = cluster.state_dir / "checkpoints" / job.id
            wait_step(ckpt, a.kill_at, 120)
            victim = client.get(job.id).node_ids[-1]  # not rank 0's node: not the rendezvous
            killed_at = time.time()
            cluster.kill_node(victim)
            final = client.wait(job.id, timeout=a.give_up_s)
            for event in client.watch(job.id, follow=False):
                t = event.time.seconds + event.time.nanos / 1e9 - killed_at
                if t > -0.5:
                    print(f"  {t:+7.2f} s  {event.message}")
            return measure("coord", ckpt, killed_at, final.state == 5)
    finally:
        cluster.stop()


def show(results: list[Result], give_up_s: float) -> None:
    print(f"\n{'mechanism':<18} {'kill -> next step (s)':>22} {'steps lost':>11} {'finished':>9}")
    for r in results:
        rec = f"{r.recovery_s:.2f}" if r.recovery_s is not None else f"> {give_up_s:g}"
        print(f"{r.name:<18} {rec:>22} {r.steps_lost:>11} {str(r.finished):>9}")
    coord = next((r for r in results if r.name == "coord"), None)
    for base in (r for r in results if r.name != "coord"):
        if coord is None or coord.recovery_s is None:
            break
        # A baseline that never recovered is counted at the give-up time: a lower bound.
        base_s = base.recovery_s if base.recovery_s is not None else give_up_s
        bound = "" if base.recovery_s is not None else " at most"
        print(f"coord / {base.name}: recovery time ratio{bound} {coord.recovery_s / base_s:.3f} "
              f"(target <= 0.2), steps lost {coord.steps_lost} vs {base.steps_lost}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--kill-at", type=int, default=50)
    p.add_argument("--ckpt-every", type=int, default=20)
    p.add_argument("--step-sleep", type=float, default=0.04, help="~17 steps/s like the issue")
    p.add_argument("--global-batch", type=int, default=64)
    p.add_argument("--give-up-s", type=float, default=240)
    p.add_argument("--only", choices=["coord", "torchrun", "torchrun-tuned"])
    p.add_argument("--keep", action="store_true", help="keep the work directories (logs)")
    a = p.parse_args()
    results = []
    runners = (("torchrun", run_torchrun_default), ("torchrun-tuned", run_torchrun_tuned),
               ("coord", run_coord))
    for name, runner in runners:
        if a.only in (None, name):
            work = Path(tempfile.mkdtemp(prefix=f"bench-{name}-"))
            print(f"running {name} in {work} ...", flush=True)
            if name.startswith("torchrun"):
                shutil.copytree(EXAMPLE, work, dirs_exist_ok=True)
            try:
                results.append(runner(a, work))
            finally:
                if not a.keep:
                    shutil.rmtree(work, ignore_errors=True)
    show(results, a.give_up_s)


if __name__ == "__main__":
    main()
