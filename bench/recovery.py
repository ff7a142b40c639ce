"""Recovery after a machine loss: coord against torchrun elastic, on the same job.

Runs examples/elastic/train.py on 3 single-process "nodes" on loopback:
  * torchrun --nnodes=2:3 --nproc-per-node=1 --rdzv-backend=c10d --max-restarts=3
    (three launchers, each in its own session), with defaults and tuned;
  * coord, with three nodes from the local provider, in restart mode;
  * coord in in-process mode (`[fault_tolerance] mode = "inprocess"`, torchft underneath);
SIGKILLs one node that does not host the rendezvous (its launcher or agent, and its worker)
at the same step, and prints for each: seconds from the kill to the next completed step,
steps lost (done, then done again after the resume), and the ratio coord / torchrun. The
in-process row also gives kill -> back at full size (a replacement healed from a peer) and,
after that, kill of the quorum service (Lighthouse) -> next completed step.

    .venv/bin/python bench/recovery.py                 # all four, ~7 minutes
    .venv/bin/python bench/recovery.py --only coord-inprocess
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from dataclasses import dataclass, field
from pathlib import Path

from coordinator.localcluster import start_coordd, wait_for
from coordinator.providers.procs import signal_tree
from trainer.elastic import committed_history

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "elastic"


@dataclass
class Result:
    name: str
    recovery_s: float | None  # kill -> first step completed after it; None: never
    steps_lost: int
    finished: bool
    steps_per_s: float | None = None  # before the kill
    extra: dict[str, float | None] = field(default_factory=dict)


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
    return Result(name, recovery, len(history.lost), finished, _steady_rate(records, killed_at))


def _steady_rate(records: list, until: float) -> float | None:
    """Steps per second from step 10 to the kill (start-up left out)."""
    span = [r for r in records if r.step >= 10 and r.t <= until]
    if len(span) < 2:
        return None
    return (span[-1].step - span[0].step) / (span[-1].t - span[0].t)


def next_step_after(ckpt: Path, t0: float) -> float | None:
    """In-process mode keeps one generation: recovery ends at the first step committed after
    `t0` (the step in flight at the kill is discarded everywhere, then redone)."""
    after = [r.t for r in committed_history(ckpt).lineage if r.t > t0]
    return min(after) - t0 if after else None


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


def run_coord(a: argparse.Namespace, work: Path, mode: str = "restart") -> Result:
    job_dir = work / "job"
    shutil.copytree(EXAMPLE, job_dir)
    (job_dir / "job.toml").write_text(textwrap.dedent(f"""
        name = "bench-recovery"
        run = "python train.py {train_args(a)}"
        [nodes]
        count = 3
        min = 2
        [fault_tolerance]
        mode = "{mode}"
    """))
    warm = {"COORD_AGENT_WARM_START": "1"} if a.warm else {}
    cluster = start_coordd(work / "state", env=warm)
    try:
        with cluster.client() as client:
            job = client.submit(job_dir / "job.toml")
            ckpt = cluster.state_dir / "checkpoints" / job.id
            wait_step(ckpt, a.kill_at, 120)
            victim = client.get(job.id).node_ids[-1]  # not rank 0's node: not the rendezvous
            killed_at = time.time()
            cluster.kill_node(victim)
            extra = _inprocess_extras(client, job.id, ckpt, killed_at) if mode == "inprocess" \
                else {}
            final = client.wait(job.id, timeout=a.give_up_s)
            for event in client.watch(job.id, follow=False):
                t = event.time.seconds + event.time.nanos / 1e9 - killed_at
                if t > -0.5:
                    print(f"  {t:+7.2f} s  {event.message}")
            result = measure("coord", ckpt, killed_at, final.state == 5)
            if mode == "inprocess":
                result.name, result.extra = "coord-inprocess", extra
                result.recovery_s = next_step_after(ckpt, killed_at)
            return result
    finally:
        cluster.stop()


def run_coord_inprocess(a: argparse.Namespace, work: Path) -> Result:
    return run_coord(a, work, mode="inprocess")


def _inprocess_extras(client, job_id: str, ckpt: Path, killed_at: float) -> dict:
    """Kill -> full size again (from the replicas' own "reformed ... new_size=3" lines), then
    SIGKILL the job's Lighthouse and time the next committed step."""
    def full_again() -> float | None:
        times = [line.time.seconds + line.time.nanos / 1e9 for line in client.logs(job_id)
                 if "reformed" in line.text and "new_size=3" in line.text]
        times = [t for t in times if t > killed_at]
        return min(times) if times else None
    rejoined = wait_for(full_again, 60, interval=0.2, what="the replacement to join")
    address = next(json.loads(e.data_json)["address"] for e in client.watch(job_id, follow=False)
                   if e.kind == "quorum.started")
    [pid] = _pids_with_arg(f"127.0.0.1:{address.rpartition(':')[2]}")
    quorum_killed_at = time.time()
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: next_step_after(ckpt, quorum_killed_at), 30, what="a step after the "
             "quorum service was killed")
    return {"full_size_s": rejoined - killed_at,
            "quorum_kill_s": next_step_after(ckpt, quorum_killed_at)}


def _pids_with_arg(arg: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if arg.encode() in (entry / "cmdline").read_bytes().split(b"\0"):
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def show(results: list[Result], give_up_s: float) -> None:
    print(f"\n{'mechanism':<18} {'kill -> next step (s)':>22} {'steps lost':>11} {'finished':>9}"
          f" {'steps/s':>8} {'-> full size (s)':>17} {'quorum kill -> step (s)':>24}")
    for r in results:
        rec = f"{r.recovery_s:.2f}" if r.recovery_s is not None else f"> {give_up_s:g}"
        rate = f"{r.steps_per_s:.1f}" if r.steps_per_s else "-"
        full, quorum = (f"{r.extra[k]:.2f}" if r.extra.get(k) is not None else "-"
                        for k in ("full_size_s", "quorum_kill_s"))
        print(f"{r.name:<18} {rec:>22} {r.steps_lost:>11} {str(r.finished):>9} {rate:>8} "
              f"{full:>17} {quorum:>24}")
    coords = [r for r in results if r.name.startswith("coord") and r.recovery_s is not None]
    for coord in coords:
        for base in (r for r in results if not r.name.startswith("coord")):
            # A baseline that never recovered is counted at the give-up time: a lower bound.
            base_s = base.recovery_s if base.recovery_s is not None else give_up_s
            bound = "" if base.recovery_s is not None else " at most"
            print(f"{coord.name} / {base.name}: recovery time ratio{bound} "
                  f"{coord.recovery_s / base_s:.3f} (target <= 0.2), steps lost "
                  f"{coord.steps_lost} vs {base.steps_lost}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--kill-at", type=int, default=50)
    p.add_argument("--ckpt-every", type=int, default=20)
    p.add_argument("--step-sleep", type=float, default=0.04, help="~17 steps/s like the issue")
    p.add_argument("--global-batch", type=int, default=64)
    p.add_argument("--give-up-s", type=float, default=240)
    p.add_argument("--only", choices=["coord", "coord-inprocess", "torchrun", "torchrun-tuned"])
    p.add_argument("--keep", action="store_true", help="keep the work directories (logs)")
    p.add_argument("--warm", action="store_true",
                   help="coord agents keep a warm worker interpreter (torch imported)")
    a = p.parse_args()
    results = []
    runners = (("torchrun", run_torchrun_default), ("torchrun-tuned", run_torchrun_tuned),
               ("coord", run_coord), ("coord-inprocess", run_coord_inprocess))
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
