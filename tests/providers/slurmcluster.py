"""A real Slurm for the slurm provider's tests, from Debian's packages (slurm-wlm, munge):
munged with its own key and socket, slurmctld, and one slurmd per compute node, all on
this machine in a temp dir with a generated slurm.conf. Debian's build has Slurm's
multiple-slurmd support, so the nodes are several slurmd daemons (`slurmd -N NAME`), each on
a port of its own. Two partitions over the same nodes: `low` (preemptible: a job there is
cancelled for a job of `high`: SIGTERM, then SIGKILL after KillWait) and `high`.

Everything it starts is its child or (slurmstepd) carries its SLURM_CONF in its
environment, so `stop` ends exactly what it started and leaves no daemon running."""

from __future__ import annotations

import dataclasses
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from coordinator.providers.procs import tree_pids
from tests.net import free_port

BINARIES = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "scancel", "sinfo", "scontrol")
KILL_WAIT_S = 10  # SIGTERM to SIGKILL when a job ends


def missing_binaries() -> list[str]:
    return [name for name in BINARIES if not shutil.which(name, path=_path())]


def _path() -> str:
    return os.environ.get("PATH", "") + ":/usr/sbin:/sbin"


@dataclasses.dataclass
class SlurmCluster:
    root: Path
    nodes: list[str]
    processes: dict[str, subprocess.Popen] = dataclasses.field(default_factory=dict)

    @property
    def conf(self) -> Path:
        return self.root / "slurm.conf"

    @property
    def env(self) -> dict[str, str]:
        """What a process needs to use this cluster (coordd, sbatch, squeue)."""
        return {"SLURM_CONF": str(self.conf)}

    def cli(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run(list(argv), env={**os.environ, **self.env, "PATH": _path()},
                              capture_output=True, text=True, timeout=30, check=check)

    # start -------------------------------------------------------------------------------
    def start(self) -> SlurmCluster:
        for sub in ("munge", "state", "log", "spool"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        os.chmod(self.root / "munge", 0o700)
        key = self.root / "munge" / "munge.key"
        key.write_bytes(os.urandom(1024))
        os.chmod(key, 0o400)
        self._spawn("munged", "munged", "-F", "-f", f"--socket={self.munge_socket}",
                    f"--key-file={key}", f"--pid-file={self.root}/munge/pid",
                    f"--log-file={self.root}/log/munged.log",
                    f"--seed-file={self.root}/munge/seed")
        self._wait(lambda: self.munge_socket.exists(), "munged's socket")
        self.conf.write_text(self._config())
        self._spawn("slurmctld", "slurmctld", "-D", "-f", str(self.conf))
        self._wait(lambda: self.cli("sinfo", check=False).returncode == 0, "slurmctld")
        for node in self.nodes:
            self.start_slurmd(node)
        self._wait(lambda: self.idle_nodes() == set(self.nodes), "every slurmd idle", 60)
        return self

    @property
    def munge_socket(self) -> Path:
        return self.root / "munge" / "sock"

    def start_slurmd(self, node: str) -> None:
        self._spawn(f"slurmd-{node}", "slurmd", "-D", "-N", node, "-f", str(self.conf))

    def _spawn(self, name: str, *argv: str) -> None:
        log = open(self.root / "log" / f"{name}.out", "ab")
        self.processes[name] = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True,
            env={**os.environ, **self.env, "PATH": _path()})
        log.close()

    def _config(self) -> str:
        host, root = socket.gethostname(), self.root
        lines = [
            "ClusterName=coordtest", f"SlurmctldHost={host}(127.0.0.1)",
            f"SlurmctldPort={free_port()}", "SlurmUser=root", "SlurmdUser=root",
            "AuthType=auth/munge", f"AuthInfo=socket={self.munge_socket}",
            "CredType=cred/munge", f"StateSaveLocation={root}/state",
            f"SlurmdSpoolDir={root}/spool/%n", f"SlurmctldPidFile={root}/slurmctld.pid",
            f"SlurmdPidFile={root}/slurmd-%n.pid", f"SlurmctldLogFile={root}/log/slurmctld.log",
            f"SlurmdLogFile={root}/log/slurmd-%n.log", "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none", "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_Core", "SchedulerType=sched/backfill",
            "SchedulerParameters=bf_interval=1,preempt_send_user_signal",
            "ReturnToService=2", "SlurmdTimeout=6", "MinJobAge=300", f"KillWait={KILL_WAIT_S}",
            "PreemptType=preempt/partition_prio", "PreemptMode=CANCEL",
            "JobAcctGatherType=jobacct_gather/none",
            "AccountingStorageType=accounting_storage/none", "JobCompType=jobcomp/none",
            "MpiDefault=none", "GresTypes=gpu",
        ]
        for node in self.nodes:
            lines.append(f"NodeName={node} NodeHostname={host} NodeAddr=127.0.0.1 CPUs=2 "
                         f"RealMemory=1000 Port={free_port()}")
        nodes = ",".join(self.nodes)
        lines += [f"PartitionName=low Nodes={nodes} Default=YES MaxTime=INFINITE State=UP "
                  "PriorityTier=1 PreemptMode=CANCEL GraceTime=0",
                  f"PartitionName=high Nodes={nodes} MaxTime=INFINITE State=UP "
                  "PriorityTier=10 PreemptMode=OFF"]
        return "\n".join(lines) + "\n"

    # state -------------------------------------------------------------------------------
    def node_states(self) -> dict[str, str]:
        out = self.cli("sinfo", "-h", "-N", "-o", "%N %t", check=False).stdout
        return dict(line.split() for line in out.splitlines() if len(line.split()) == 2)

    def idle_nodes(self) -> set[str]:
        return {node for node, state in self.node_states().items() if state == "idle"}

    def jobs(self) -> dict[str, dict[str, str]]:
        """Every job squeue lists: id -> name, state, node, partition."""
        out = self.cli("squeue", "-h", "-t", "all", "-o", "%i|%j|%T|%N|%P", check=False).stdout
        jobs = {}
        for line in out.splitlines():
            job_id, name, state, node, partition = line.split("|")
            jobs[job_id] = {"name": name, "state": state, "node": node, "partition": partition}
        return jobs

    def live_jobs(self) -> dict[str, dict[str, str]]:
        return {i: j for i, j in self.jobs().items()
                if j["state"] in ("PENDING", "RUNNING", "CONFIGURING", "COMPLETING")}

    def kill_slurmd(self, node: str) -> None:
        """The node's daemon dies (SIGKILL): slurmctld marks it DOWN after SlurmdTimeout."""
        process = self.processes.pop(f"slurmd-{node}")
        process.kill()
        process.wait()

    def step_pids(self, node: str | None = None) -> list[int]:
        """slurmstepd processes of this cluster (those of jobs on `node` only: `node`)."""
        jobs = [i for i, j in self.jobs().items() if j["node"] == node] if node else None
        found = []
        for entry in Path("/proc").iterdir():
            try:
                cmdline = (entry / "cmdline").read_bytes()
                environ = (entry / "environ").read_bytes().split(b"\0")
            except OSError:
                continue
            if not cmdline.startswith(b"slurmstepd") or \
                    f"SLURM_CONF={self.conf}".encode() not in environ:
                continue
            if jobs is None or any(f"[{job}.".encode() in cmdline for job in jobs):
                found.append(int(entry.name))
        return found

    def kill_node(self, node: str) -> None:
        """The machine dies: its slurmd and everything its jobs run, at once (SIGKILL)."""
        steps = self.step_pids(node)
        self.kill_slurmd(node)
        for pid in steps:
            _kill_tree(pid)

    # stop --------------------------------------------------------------------------------
    def stop(self) -> None:
        """Cancel every job, end every daemon and job process it started."""
        if "slurmctld" in self.processes:
            self.cli("scancel", "--full", "--signal=KILL", "-u", "root", check=False)
        for pid in self.step_pids():  # a job's whole tree: stepd, its agent, its workers
            _kill_tree(pid)
        for name in reversed(list(self.processes)):
            process = self.processes.pop(name)
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def _wait(self, ready, what: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while not ready():
            for name, process in self.processes.items():
                if process.poll() is not None:
                    raise RuntimeError(f"{name} exited ({process.returncode}); see "
                                       f"{self.root}/log")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{what} not ready within {timeout} s; see {self.root}/log")
            time.sleep(0.2)


def _kill_tree(root: int) -> None:
    for pid in tree_pids(root):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def start_cluster(root: Path, nodes: int = 4) -> SlurmCluster:
    cluster = SlurmCluster(root, [f"c{i}" for i in range(1, nodes + 1)])
    try:
        return cluster.start()
    except BaseException:
        cluster.stop()
        raise
