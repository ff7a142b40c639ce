"""What the slurm provider says to Slurm and reads back: the sbatch options and batch script
of one node's allocation, squeue's lines, and sbatch's refusals explained by the job.toml
key behind them. Pure functions: slurm.py does the talking."""

from __future__ import annotations

import dataclasses
import shlex

from contract.spec import SlurmResources

# squeue -o: one line a job, fields that never hold a '|' (names are coord's own).
SQUEUE_FORMAT = "%i|%j|%k|%T|%N|%r"
# States after which an allocation runs nothing any more (squeue keeps them for MinJobAge).
ENDED = frozenset({"BOOT_FAIL", "CANCELLED", "COMPLETED", "DEADLINE", "FAILED", "NODE_FAIL",
                   "OUT_OF_MEMORY", "PREEMPTED", "REVOKED", "SPECIAL_EXIT", "TIMEOUT"})
# sinfo's node states (less their flag suffixes) in which nothing on the node runs on.
NODE_DEAD = frozenset({"down", "fail", "failing", "unknown"})
JOB_PREFIX = "coord-"
# A refusal's words, and the job.toml key that most likely caused it.
REFUSAL_KEYS = (("partition", "partition"), ("account", "account"), ("qos", "qos"),
                ("gres", "gres"), ("generic resource", "gres"), ("feature", "constraint"),
                ("constraint", "constraint"), ("time limit", "time"))


@dataclasses.dataclass(frozen=True)
class SlurmJob:
    job_id: str
    name: str
    comment: str
    state: str
    node: str
    reason: str

    @property
    def node_id(self) -> str:
        return self.name[len(JOB_PREFIX):]

    @property
    def ended(self) -> bool:
        return self.state in ENDED


def merged(defaults: SlurmResources, job: SlurmResources | None) -> SlurmResources:
    """The job's `[resources.slurm]` over coordd's `[slurm.defaults]`."""
    data = defaults.model_dump(exclude_none=True)
    if job is not None:
        mine = job.model_dump(exclude_none=True)
        if not mine.get("sbatch_options"):
            mine.pop("sbatch_options", None)
        data.update(mine)
    return SlurmResources.model_validate(data)


def sbatch_argv(res: SlurmResources, node_id: str, tag: str, node_dir: str,
                signal_before_end_s: int, test_only: bool = False) -> list[str]:
    """One node's allocation: one task on one node, named after the node, marked with the
    coordd that made it, never requeued (a replacement is a new node)."""
    argv = ["sbatch", "--parsable", f"--job-name={JOB_PREFIX}{node_id}",
            f"--comment={tag}", "--nodes=1", "--ntasks=1", "--no-requeue",
            f"--chdir={node_dir}", f"--output={node_dir}/agent.log",
            f"--signal=B:TERM@{signal_before_end_s}"]
    for key in ("partition", "account", "qos", "time", "gres", "constraint"):
        if value := getattr(res, key):
            argv.append(f"--{key}={value}")
    if res.exclusive is not False:
        argv.append("--exclusive")
    argv += res.sbatch_options
    return argv + ["--test-only"] * test_only


def batch_script(secrets: str, agent_command: str, address: str, node_id: str,
                 node_dir: str, stop_grace_s: float) -> str:
    """The agent replaces the batch shell, so the batch step's signals (time limit,
    preemption, scancel) reach it; its credentials come from an owner-only file, never from
    a command line or the job's environment, which `scontrol show job` shows."""
    return ("#!/bin/bash\n"
            f"set -a; . {shlex.quote(secrets)} || exit 1; set +a\n"
            f"exec {agent_command} --coordinator {shlex.quote(address)} "
            f"--node-id {shlex.quote(node_id)} --workdir {shlex.quote(node_dir + '/work')} "
            f"--stop-grace {stop_grace_s:g}\n")


def parse_squeue(out: str, tag: str) -> dict[str, SlurmJob]:
    """The jobs of coordd `tag`, by node id."""
    jobs = {}
    for line in out.splitlines():
        fields = line.split("|", 5)
        if len(fields) != 6:
            continue
        job = SlurmJob(*(f.strip() for f in fields))
        if job.name.startswith(JOB_PREFIX) and job.comment == tag:
            if job.node_id not in jobs or not job.ended:  # a live one wins over an old one
                jobs[job.node_id] = job
    return jobs


def dead_nodes(sinfo_out: str) -> dict[str, str]:
    """`sinfo -h -N -o '%N|%T'`: the nodes in a state nothing runs on, with that state."""
    dead = {}
    for line in sinfo_out.splitlines():
        name, _, state = line.partition("|")
        if state.rstrip("*~#!%$@^-+").lower() in NODE_DEAD:
            dead[name.strip()] = state.strip()
    return dead


def explain_refusal(stderr: str, res: SlurmResources) -> str:
    """sbatch's own words, and the key of `[resources.slurm]` behind them where they name
    one."""
    text = " ".join(line.removeprefix("sbatch: error: ").strip()
                    for line in stderr.splitlines() if line.strip()) or "no output"
    lowered = text.lower()
    for words, key in REFUSAL_KEYS:
        value = getattr(res, key)
        if words in lowered and value is not None:
            return f"sbatch refused resources.slurm.{key} = {value!r}: {text}"
    options = [o for o in res.sbatch_options if o.partition("=")[0][2:] in lowered]
    if options:
        return f"sbatch refused resources.slurm.sbatch_options {options}: {text}"
    if "node configuration is not available" in lowered and (shaping := _shaping(res)):
        return (f"sbatch refused the allocation: no node of the partition has what "
                f"resources.slurm asks for ({'; '.join(shaping)}): {text}")
    return f"sbatch refused the allocation: {text}"


def _shaping(res: SlurmResources) -> list[str]:
    """The keys that decide which nodes an allocation fits on, as set."""
    keys = [f"{key} = {getattr(res, key)!r}" for key in ("gres", "constraint")
            if getattr(res, key)]
    return keys + [f"sbatch_options = {res.sbatch_options}"] * bool(res.sbatch_options)
