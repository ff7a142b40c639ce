"""Recovery after a machine loss: coord against torchrun elastic and raw torchft, on the same job.

Runs examples/elastic/train.py's job on 3 single-process "nodes" on loopback:
  * torchrun --nnodes=2:3 --nproc-per-node=1 --rdzv-backend=c10d --max-restarts=3
    (three launchers, each in its own session), with defaults and tuned;
  * coord, with three nodes from the local provider, in restart mode;
  * coord in in-process mode (`[fault_tolerance] mode = "inprocess"`, torchft underneath),
    and the same with `[nodes] spares = 1` (an idle node with a warm interpreter replaces the
    lost one at once);
  * coord in in-process mode where only the worker process is killed and its node stays
    (what the torchft row kills): coordd restarts it in place, from the warm interpreter the
    agents keep beside running replicas (on by default on real machines; here set for this
    row, --cold turns it off);
  * coord in both modes with a node frozen (SIGSTOP) instead of killed (rows "...-frozen"):
    the survivors' stall is coordd's heartbeat timeout plus the re-formation or restart;
  * raw torchft 0.2.0 (bench/torchft_job.py: a `torchft_lighthouse`, three replica processes
    each with a Manager and ProcessGroupGloo), restarted by hand the way a torchft user would;
SIGKILLs one node that does not host the rendezvous (its launcher or agent, and its worker)
at the same step, and prints for each: seconds from the kill to the next completed step,
steps lost (done, then done again after the resume), and the ratios. The in-process and
torchft rows also give kill -> back at full size (the killed replica restarted at once and
healed from a peer; where a node was killed coord boots a replacement node first, so those
rows also give the time from that node's agent registering, the point where torchft's row
starts) and, after that, kill of the quorum service (Lighthouse) -> training going again
(coord restarts it; nothing restarts torchft's: "never" within --quorum-window).

`steady` runs the job without failures (--steady-steps steps, no checkpoints) under plain DDP
(torchrun --standalone, DistributedDataParallel + gloo, no fault tolerance), raw torchft and
coord in-process, --rounds times in alternating order, and prints steps/s after a warm-up
(median and spread) and each one's overhead against plain DDP. It does so twice: without step
sleep (a short step, nearly all of it synchronisation: the harshest case for a quorum
service), and with --step-sleep (the issue's ~17 steps/s; the sleep stands for compute that
leaves the CPU free, as a GPU step does).

    .venv/bin/python bench/recovery.py                 # everything (run time: docs/benchmarks.md)
    .venv/bin/python bench/recovery.py --only torchft  # one row (or steady, coord-inprocess, ...)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from contract import events as ev
from contract.states import JobState
from coordinator.localcluster import start_coordd, wait_for
from coordinator.providers.procs import session_pids, signal_tree
from trainer.elastic import committed_history
from trainer.elastic.steplog import STEPLOG_FILE

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "elastic"
BIN = Path(sys.executable).parent
NO_CHECKPOINTS = 10**9  # --ckpt-every for the steady runs: time the loop, not the disk
WARMUP_STEPS = 20  # steady rates leave out start-up and the first quorums


@dataclass
class Result:
    name: str
    recovery_s: float | None  # kill -> first step completed after it; None: never
    steps_lost: int
    finished: bool
    steps_per_s: float | None = None  # before the kill
    extra: dict[str, float | None] = field(default_factory=dict)


@dataclass
class Steady:
    name: str
    step_sleep: float
    rates: list[float] = field(default_factory=list)  # steps/s, one per round
    failures: list[str] = field(default_factory=list)

    @property
    def median(self) -> float | None:
        return statistics.median(self.rates) if self.rates else None


class RunFailed(RuntimeError):
    """A run went wrong: the bench reports it, keeps its directory and goes on."""


FAILURES = (RunFailed, TimeoutError, subprocess.SubprocessError)


def train_args(a: argparse.Namespace, **override: float | None) -> str:
    """The job's flags (train.py and torchft_job.py share them); None leaves one out."""
    values = {"steps": a.steps, "ckpt_every": a.ckpt_every, "step_sleep": a.step_sleep,
              "global_batch": a.global_batch, **override}
    return " ".join(f"--{k.replace('_', '-')} {v}" for k, v in values.items() if v is not None)


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


def measure_in_place(name: str, ckpt: Path, killed_at: float, finished: bool,
                     extra: dict[str, float | None]) -> Result:
    """In-process mode and torchft keep one lineage: recovery ends at the first step
    committed after the kill (the step in flight is discarded everywhere, then redone); a
    step committed twice or skipped is a lost step."""
    history = committed_history(ckpt)
    lost = len(history.lost) + len(history.repeats) + sum(b - a + 1 for a, b in history.gaps)
    return Result(name, steps_after(ckpt, killed_at), lost, finished,
                  _steady_rate(history.lineage, killed_at), extra)


def _steady_rate(records: list, until: float = float("inf"), first: int = 10) -> float | None:
    """Steps per second from step `first` to `until` (start-up left out)."""
    span = [r for r in records if r.step >= first and r.t <= until]
    if len(span) < 2:
        return None
    return (span[-1].step - span[0].step) / (span[-1].t - span[0].t)


def steps_after(ckpt: Path, t0: float, nth: int = 1) -> float | None:
    """Seconds from `t0` to the `nth` step committed after it; None if there is none yet."""
    after = sorted(r.t for r in committed_history(ckpt).lineage if r.t > t0)
    return after[nth - 1] - t0 if len(after) >= nth else None


def kill_quorum_service(ckpt: Path, kill: Callable[[], None], window: float) -> float | None:
    """Kill the quorum service just after a step is committed, and time the second step
    committed after that: the step in flight may still commit without a quorum service, the
    next one needs a new quorum. None: training did not go on within `window` seconds."""
    last = committed_history(ckpt).lineage[-1].step
    wait_for(lambda: committed_history(ckpt).lineage[-1].step > last, 30, interval=0.002,
             what="a step before killing the quorum service")
    killed_at = time.time()
    kill()
    with contextlib.suppress(TimeoutError):
        wait_for(lambda: steps_after(ckpt, killed_at, nth=2), window, interval=0.01,
                 what="training to go on after the quorum service was killed")
    return steps_after(ckpt, killed_at, nth=2)


# -- torchrun ------------------------------------------------------------------------------

def run_torchrun_default(a: argparse.Namespace, work: Path) -> Result:
    return run_torchrun(a, work, tuned=False)


def run_torchrun_tuned(a: argparse.Namespace, work: Path) -> Result:
    return run_torchrun(a, work, tuned=True)


def run_torchrun(a: argparse.Namespace, work: Path, tuned: bool) -> Result:
    copy_example(work)
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
        cmd = [str(BIN / "torchrun"), "--nnodes=2:3",
               "--nproc-per-node=1", "--rdzv-backend=c10d",
               f"--rdzv-endpoint=127.0.0.1:{port}", "--rdzv-id=bench", "--max-restarts=3",
               *rdzv_conf, "--no-python", "bash", "-c", script]
        launchers.append(spawn(cmd, work / f"launcher{i}.log", cwd=work, env=env))
        if i == 0:
            time.sleep(1.0)  # launcher 0 hosts the rendezvous store
    try:
        wait_step(ckpt, a.kill_at, 120)
        killed_at = time.time()
        signal_tree(launchers[2].pid, signal.SIGKILL)
        finished = _wait_all(launchers[:2], a.give_up_s)
    finally:
        kill_all(launchers)
    return measure("torchrun (tuned)" if tuned else "torchrun", ckpt, killed_at, finished)


def copy_example(work: Path) -> None:
    shutil.copytree(EXAMPLE, work, dirs_exist_ok=True, ignore=shutil.ignore_patterns(
        "checkpoints"))


def spawn(cmd: list[str], log_path: Path, **kwargs) -> subprocess.Popen:
    """A process in its own session, its output in `log_path`."""
    with open(log_path, "ab") as log:
        return subprocess.Popen(cmd, stdout=log, stderr=log, start_new_session=True, **kwargs)


def kill_all(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        signal_tree(p.pid, signal.SIGKILL)
        p.wait()


def _wait_all(procs: list[subprocess.Popen], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    for p in procs:
        try:
            p.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            return False
    return all(p.returncode == 0 for p in procs)


# -- coord ---------------------------------------------------------------------------------

@contextlib.contextmanager
def coord_job(a: argparse.Namespace, work: Path, mode: str, args: str, spares: int = 0,
              warm: bool = False) -> Iterator[tuple]:
    """coordd with three local nodes (and `spares` idle ones) running the example job in
    `mode`; yields (cluster, client, job id, checkpoint directory). `warm`: every agent keeps
    a warm interpreter, as agents on their own machines do by default (the local provider
    turns it on only for jobs with spares: its nodes share this machine's cores)."""
    job_dir = work / "job"
    shutil.copytree(EXAMPLE, job_dir, ignore=shutil.ignore_patterns("checkpoints"))
    # max_restarts: the worker row's in-place restart is charged to it (a node loss is not).
    (job_dir / "job.toml").write_text(textwrap.dedent(f"""
        name = "bench-recovery"
        run = "python train.py {args}"
        max_restarts = 1
        [nodes]
        count = 3
        min = 2
        spares = {spares}
        [fault_tolerance]
        mode = "{mode}"
    """))
    env = {"COORD_AGENT_WARM_START": "0"} if a.cold else \
        {"COORD_AGENT_WARM_START": "1"} if warm else {}
    cluster = start_coordd(work / "state", env=env)
    try:
        with cluster.client() as client:
            job = client.submit(job_dir / "job.toml")
            yield cluster, client, job.id, cluster.state_dir / "checkpoints" / job.id
    finally:
        cluster.stop()


def run_coord(a: argparse.Namespace, work: Path, mode: str = "restart",
              spares: int = 0) -> Result:
    with coord_job(a, work, mode, train_args(a), spares) as (cluster, client, job_id, ckpt):
        wait_step(ckpt, a.kill_at, 120)
        victim = client.get(job_id).node_ids[-1]  # not rank 0's node: not the rendezvous
        killed_at = time.time()
        cluster.kill_node(victim)
        extra = _inprocess_extras(a, client, job_id, ckpt, killed_at) \
            if mode == "inprocess" else {}
        final = client.wait(job_id, timeout=a.give_up_s)
        for event in client.watch(job_id, follow=False):
            t = event.time.timestamp() - killed_at
            if t > -0.5:
                print(f"  {t:+7.2f} s  {event.message}")
        if mode == "inprocess":
            name = "coord-inprocess" + ("+spare" if spares else "")
            return measure_in_place(name, ckpt, killed_at, final.state is JobState.SUCCEEDED, extra)
        return measure("coord", ckpt, killed_at, final.state is JobState.SUCCEEDED)


def run_coord_inprocess(a: argparse.Namespace, work: Path) -> Result:
    return run_coord(a, work, mode="inprocess")


def run_coord_inprocess_worker(a: argparse.Namespace, work: Path) -> Result:
    """Only the worker process dies (its node stays), like the torchft row's kill: coordd
    restarts it in place from the warm interpreter its agent keeps beside a running replica
    (unless --cold), and it heals from a peer."""
    with coord_job(a, work, "inprocess", train_args(a), warm=True) as (
            cluster, client, job_id, ckpt):
        wait_step(ckpt, a.kill_at, 120)
        victim = client.get(job_id).node_ids[-1]
        [worker] = _worker_pids(cluster.node_pid(victim), job_id)
        killed_at = time.time()
        os.kill(worker, signal.SIGKILL)
        extra = _inprocess_extras(a, client, job_id, ckpt, killed_at)
        final = client.wait(job_id, timeout=a.give_up_s)
        return measure_in_place("coord-inprocess-worker", ckpt, killed_at,
                                final.state is JobState.SUCCEEDED, extra)


def run_coord_frozen(a: argparse.Namespace, work: Path, mode: str = "restart") -> Result:
    """SIGSTOP a node (its agent and worker: a frozen host whose sockets stay open). The
    survivors wait in a collective on it until coordd drops it, its heartbeats missing for
    `heartbeat_timeout_s` (coordd's default), and has their collective abandoned; SIGCONT once
    training goes on. The stall ends at the second step after the freeze (the step in flight
    may still be committed)."""
    with coord_job(a, work, mode, train_args(a)) as (cluster, client, job_id, ckpt):
        wait_step(ckpt, a.kill_at, 120)
        victim = client.get(job_id).node_ids[-1]
        frozen_at = time.time()
        cluster.kill_node(victim, signal.SIGSTOP)
        try:
            wait_for(lambda: steps_after(ckpt, frozen_at, nth=2), a.give_up_s, interval=0.01,
                     what="the survivors to train again")
        finally:
            cluster.kill_node(victim, signal.SIGCONT)
        finished = client.wait(job_id, timeout=a.give_up_s).state == 5
        if mode == "inprocess":
            result = measure_in_place("coord-inprocess-frozen", ckpt, frozen_at, finished, {})
            result.recovery_s = steps_after(ckpt, frozen_at, nth=2)
            return result
        return measure("coord-frozen", ckpt, frozen_at, finished)


def run_coord_inprocess_frozen(a: argparse.Namespace, work: Path) -> Result:
    return run_coord_frozen(a, work, mode="inprocess")


def _worker_pids(agent_pid: int, job_id: str) -> list[int]:
    """The job's workers on a local node: processes of its agent's session working in the
    job's directory (an idle warm interpreter works in the agent's)."""
    found = []
    for pid in session_pids(agent_pid):
        with contextlib.suppress(OSError):
            if pid != agent_pid and Path(os.readlink(f"/proc/{pid}/cwd")).parts[-2:] == (
                    "jobs", job_id):
                found.append(pid)
    return found


def run_coord_inprocess_spare(a: argparse.Namespace, work: Path) -> Result:
    """With `[nodes] spares = 1`: an idle node with a warm interpreter takes the place."""
    return run_coord(a, work, mode="inprocess", spares=1)


def _inprocess_extras(a: argparse.Namespace, client, job_id: str, ckpt: Path,
                      killed_at: float) -> dict:
    """Kill -> first step committed at full size again (after the replicas' own "reformed
    ... new_size=3" line), then SIGKILL the job's Lighthouse and time training going on."""
    def full_again() -> float | None:
        times = [line.time.timestamp() for line in client.logs(job_id)
                 if "reformed" in line.text and "new_size=3" in line.text]
        times = [t for t in times if t > killed_at]
        return min(times) if times else None
    rejoined = wait_for(full_again, 60, interval=0.2, what="the replacement to join")
    rejoined += wait_for(lambda: steps_after(ckpt, rejoined), 30, what="a step at full size")
    events = list(client.watch(job_id, follow=False))
    address = next(e.payload.address for e in events
                   if isinstance(e.payload, ev.QuorumStarted))
    # The replacement node's agent registered: where torchft's row starts (its replica is
    # restarted on the spot, with no node to boot).
    node_up = min((t for e in events if "node_joined" in e.message
                   and (t := e.time.timestamp()) > killed_at), default=None)
    [pid] = _pids_with_arg(f"127.0.0.1:{address.rpartition(':')[2]}")
    return {"full_size_s": rejoined - killed_at,
            "node_up_full_s": None if node_up is None else rejoined - node_up,
            "quorum_kill_s": kill_quorum_service(ckpt, lambda: os.kill(pid, signal.SIGKILL),
                                                 a.quorum_window)}


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


# -- raw torchft ---------------------------------------------------------------------------

class TorchftJob:
    """bench/torchft_job.py on three replicas around a `torchft_lighthouse`, all on loopback.
    The Lighthouse gets coord's join timeout (100 ms; the command's default, 60 s, makes a
    re-formation wait for the 5 s heartbeat expiry)."""

    def __init__(self, work: Path, args: str, replicas: int = 3) -> None:
        self.work, self.log_dir = work, work / "ckpt"
        port = _free_port()
        self.lighthouse = spawn([str(BIN / "torchft_lighthouse"), "--bind",
                                 f"127.0.0.1:{port}", "--min_replicas", "2",
                                 "--join_timeout_ms", "100"], work / "lighthouse.log")
        self.commands = [[sys.executable, str(ROOT / "bench" / "torchft_job.py"),
                          "--lighthouse", f"http://127.0.0.1:{port}", "--replica", str(i),
                          "--log-dir", str(self.log_dir), *args.split()]
                         for i in range(replicas)]
        self.replicas = [self._start(i) for i in range(replicas)]

    def _start(self, i: int) -> subprocess.Popen:
        return spawn(self.commands[i], self.work / f"replica{i}.log", cwd=ROOT)

    def kill_and_restart(self, i: int) -> float:
        """SIGKILL replica `i` and start it again with the same command; the kill time."""
        killed_at = time.time()
        self.replicas[i].kill()
        self.replicas[i].wait()
        self.replicas[i] = self._start(i)
        return killed_at

    def finished(self, timeout: float) -> bool:
        return _wait_all(self.replicas, timeout)

    def stop(self) -> None:
        kill_all([self.lighthouse, *self.replicas])

    def __enter__(self) -> TorchftJob:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def run_torchft(a: argparse.Namespace, work: Path) -> Result:
    with TorchftJob(work, train_args(a, ckpt_every=None)) as job:
        wait_step(job.log_dir, a.kill_at, 120)
        killed_at = job.kill_and_restart(2)  # not participating rank 0, like the others
        full = wait_for(lambda: _first_full_step(job.log_dir, killed_at, 3), 60, interval=0.05,
                        what="the restarted torchft replica to join")
        quorum = kill_quorum_service(job.log_dir, job.lighthouse.kill, a.quorum_window)
        return measure_in_place("torchft", job.log_dir, killed_at, job.finished(0),
                                {"full_size_s": full - killed_at, "quorum_kill_s": quorum})


def _first_full_step(log_dir: Path, after: float, size: int) -> float | None:
    """When the first step with `size` participants was committed after `after`."""
    path = log_dir / STEPLOG_FILE
    lines = path.read_text().splitlines() if path.exists() else []
    times = [raw["t"] for raw in map(json.loads, lines[:-1])  # the last may be torn
             if raw["t"] > after and raw["participants"] == size]
    return min(times, default=None)


# -- steady speed --------------------------------------------------------------------------

def run_steady(a: argparse.Namespace, work: Path) -> list[Steady]:
    return [s for sleep in (0.0, a.step_sleep) for s in _run_steady(a, work, sleep)]


def _run_steady(a: argparse.Namespace, work: Path, sleep: float) -> list[Steady]:
    """Each mechanism `a.rounds` times, the order reversed every other round (the machine's
    load drifts), no failures."""
    runners = {"plain DDP": _steady_ddp, "torchft": _steady_torchft,
               "coord-inprocess": _steady_coord}
    results = {name: Steady(name, sleep) for name in runners}
    for round_ in range(a.rounds):
        for name in list(runners)[::1 if round_ % 2 == 0 else -1]:
            run_dir = work / f"{name.replace(' ', '-')}-{sleep:g}-{round_}"
            run_dir.mkdir()
            try:
                ckpt = runners[name](a, run_dir, sleep)
                rate = _steady_rate(committed_history(ckpt).lineage, first=WARMUP_STEPS)
                if rate is None:
                    raise RunFailed(f"no steps recorded in {ckpt}")
            except FAILURES as exc:
                results[name].failures.append(f"{exc} ({run_dir})")
                print(f"  round {round_ + 1}: {name} FAILED: {exc}", flush=True)
                continue
            results[name].rates.append(rate)
            print(f"  round {round_ + 1}: {name}, step sleep {sleep:g} s: {rate:.1f} steps/s",
                  flush=True)
    return list(results.values())


def steady_args(a: argparse.Namespace, sleep: float, **override: float | None) -> str:
    return train_args(a, **{"steps": a.steady_steps, "step_sleep": sleep,
                            "ckpt_every": NO_CHECKPOINTS, **override})


def _steady_ddp(a: argparse.Namespace, work: Path, sleep: float) -> Path:
    """Plain DDP: train.py under torchrun --standalone takes its restart-mode path
    (DistributedDataParallel + gloo) and nothing watches for failures."""
    copy_example(work)
    env = {**os.environ, "COORD_CHECKPOINT_DIR": str(work / "ckpt")}
    cmd = [str(BIN / "torchrun"), "--standalone", "--nproc-per-node=3", "train.py",
           *steady_args(a, sleep).split()]
    with open(work / "torchrun.log", "wb") as log:
        subprocess.run(cmd, cwd=work, env=env, stdout=log, stderr=log, check=True,
                       timeout=a.give_up_s)
    return work / "ckpt"


def _steady_torchft(a: argparse.Namespace, work: Path, sleep: float) -> Path:
    with TorchftJob(work, steady_args(a, sleep, ckpt_every=None)) as job:  # it writes none
        if not job.finished(a.give_up_s):
            raise RunFailed(f"exit codes {[p.returncode for p in job.replicas]}")
        return job.log_dir


def _steady_coord(a: argparse.Namespace, work: Path, sleep: float) -> Path:
    with coord_job(a, work, "inprocess", steady_args(a, sleep)) as (_, client, job_id, ckpt):
        if client.wait(job_id, timeout=a.give_up_s).state is not JobState.SUCCEEDED:
            raise RunFailed("the job did not succeed")
        return ckpt


# -- report --------------------------------------------------------------------------------

def _seconds(value: float | None, never: str) -> str:
    return f"{value:.2f}" if value is not None else never


def show(results: list[Result], steady: list[Steady], a: argparse.Namespace) -> None:
    never = f"never (> {a.quorum_window:g} s)"
    print(f"\n{'mechanism':<22} {'kill -> next step (s)':>22} {'steps lost':>11} {'finished':>9}"
          f" {'steps/s':>8} {'-> full size (s)':>17} {'quorum kill -> step (s)':>24}")
    for r in results:
        rate = f"{r.steps_per_s:.1f}" if r.steps_per_s else "-"
        full = _seconds(r.extra.get("full_size_s"), "-")
        quorum = _seconds(r.extra["quorum_kill_s"], never) if "quorum_kill_s" in r.extra \
            else "-"
        print(f"{r.name:<22} {_seconds(r.recovery_s, f'> {a.give_up_s:g}'):>22} "
              f"{r.steps_lost:>11} {str(r.finished):>9} {rate:>8} {full:>17} {quorum:>24}")
    if steady:
        print(f"\n{'steady, no failure':<22} {'step sleep':>11} {'steps/s (median)':>17} "
              f"{'spread':>15} {'rounds':>7}")
        for s in steady:
            if s.rates:
                print(f"{s.name:<22} {s.step_sleep:>11g} {s.median:>17.1f} {min(s.rates):>7.1f}-"
                      f"{max(s.rates):<7.1f} {len(s.rates):>7}")
            for failure in s.failures:
                print(f"{s.name:<22} failed: {failure}")
    print()
    by_name = {r.name: r for r in results}
    _show_coord_vs_torchrun(results, a.give_up_s)
    torchft = by_name.get("torchft")
    coords = [r for r in results if r.name.startswith("coord-inprocess")]
    for coord in coords if torchft else []:
        _ratio(f"{coord.name} / torchft: kill -> next step", coord.recovery_s,
               torchft.recovery_s, 1)
        _ratio(f"{coord.name} / torchft: kill -> full size",
               coord.extra.get("full_size_s"), torchft.extra.get("full_size_s"), 1)
        if coord.extra.get("node_up_full_s") is not None:  # a new node was booted
            _ratio(f"{coord.name} / torchft: replacement up (coord: node registered; torchft: "
                   "replica restarted at the kill) -> full size",
                   coord.extra["node_up_full_s"], torchft.extra.get("full_size_s"), 1)
    for r in [*coords, torchft]:
        if r is not None and "quorum_kill_s" in r.extra:
            seconds = r.extra["quorum_kill_s"]
            took = f"{seconds:.2f} s" if seconds is not None else never
            print(f"{r.name}: quorum-service kill -> training again {took} "
                  "(target <= 5 s for coord; torchft restarts nothing)")
    speeds = {(s.name, s.step_sleep): s.median for s in steady if s.rates}
    for (name, sleep), speed in speeds.items():
        if name != "plain DDP" and (base := speeds.get(("plain DDP", sleep))):
            print(f"{name} / plain DDP, step sleep {sleep:g} s: steady overhead "
                  f"{1 - speed / base:+.1%} of median steps/s (target <= 3% for coord)")


def _ratio(what: str, ours: float | None, theirs: float | None, target: float) -> None:
    value = f"{ours / theirs:.3f}" if ours is not None and theirs else "n/a"
    print(f"{what}: ratio {value} ({_seconds(ours, 'never')} s vs "
          f"{_seconds(theirs, 'never')} s, target <= {target:g})")


def _show_coord_vs_torchrun(results: list[Result], give_up_s: float) -> None:
    coords = [r for r in results if r.name.startswith("coord") and r.recovery_s is not None]
    for coord in coords:
        for base in (r for r in results if r.name.startswith("torchrun")):
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
    p.add_argument("--quorum-window", type=float, default=30,
                   help="seconds to wait for training after the quorum service is killed")
    p.add_argument("--steady-steps", type=int, default=400)
    p.add_argument("--rounds", type=int, default=3, help="steady runs of each mechanism")
    p.add_argument("--only", choices=[*RUNNERS, "steady"])
    p.add_argument("--keep", action="store_true", help="keep the work directories (logs)")
    p.add_argument("--cold", action="store_true",
                   help="coord agents keep no warm worker interpreter (COORD_AGENT_WARM_START=0)")
    a = p.parse_args()
    results, steady = [], []
    for name in [*RUNNERS, "steady"]:
        if a.only not in (None, name):
            continue
        work = Path(tempfile.mkdtemp(prefix=f"bench-{name}-"))
        print(f"running {name} in {work} ...", flush=True)
        try:
            if name == "steady":
                steady = run_steady(a, work)
                ok = not any(s.failures for s in steady)
            else:
                results.append(RUNNERS[name](a, work))
                ok = True
        except FAILURES as exc:
            print(f"{name} FAILED: {exc}", flush=True)
            ok = False
        if ok and not a.keep:
            shutil.rmtree(work, ignore_errors=True)
        elif not ok:
            print(f"  its logs are kept in {work}", flush=True)
    show(results, steady, a)


RUNNERS: dict[str, Callable[[argparse.Namespace, Path], Result]] = {
    "torchrun": run_torchrun_default, "torchrun-tuned": run_torchrun_tuned,
    "coord": run_coord, "coord-inprocess": run_coord_inprocess,
    "coord-inprocess+spare": run_coord_inprocess_spare,
    "coord-inprocess-worker": run_coord_inprocess_worker, "torchft": run_torchft,
    "coord-frozen": run_coord_frozen, "coord-inprocess-frozen": run_coord_inprocess_frozen}


if __name__ == "__main__":
    main()
