"""The worker environment: one table of every variable coord sets for a worker, its
builders (coordd's for each rank, the agent's for the node) and its parsers (the elastic
trainer's). A job's [env] may not set a reserved name (spec.py derives RESERVED_ENV from this
table); docs/worker-environment.md documents each row.

The agent adds the rows marked "agent" on the node (it alone knows the node's memory and
cores).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple


class Variable(NamedTuple):
    name: str
    set_by: str  # "coordd" or "agent"
    reserved: bool  # a job's [env] may not set it (False: a default the job may override)


def _rows(set_by: str, reserved: bool, *names: str) -> tuple[Variable, ...]:
    return tuple(Variable(name, set_by, reserved) for name in names)


TABLE: tuple[Variable, ...] = (
    # torch.distributed's layout, as torchrun sets it
    *_rows("coordd", True, "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE",
           "GROUP_RANK", "GROUP_WORLD_SIZE", "ROLE_RANK", "ROLE_WORLD_SIZE", "ROLE_NAME",
           "MASTER_ADDR", "MASTER_PORT"),
    # torchrun's own, for a script that reads them
    *_rows("coordd", True, "TORCHELASTIC_RESTART_COUNT", "TORCHELASTIC_MAX_RESTARTS",
           "TORCHELASTIC_RUN_ID", "TORCHELASTIC_USE_AGENT_STORE"),
    # coord's
    *_rows("coordd", True, "COORD_JOB_ID", "COORD_JOB_NAME", "COORD_GENERATION",
           "COORD_NODE_ID", "COORD_NODE_HOST", "COORD_CHECKPOINT_DIR"),
    *_rows("agent", True, "COORD_SNAPSHOT_DIR", "COORD_LIFELINE_FD"),
    # in-process (torchft) workers only
    *_rows("coordd", True, "REPLICA_GROUP_ID", "TORCHFT_LIGHTHOUSE", "TORCHFT_QUORUM_RETRIES",
           "COORD_FT_MODE", "COORD_FT_JOIN", "COORD_FT_MIN_REPLICAS", "COORD_FT_REPLICAS",
           "COORD_PAUSE_S"),
    # defaults a job may override in its [env]
    *_rows("coordd", False, "RUST_LOG"),
    *_rows("agent", False, "OMP_NUM_THREADS", "TORCH_NCCL_ASYNC_ERROR_HANDLING", "TMPDIR",
           "PYTHONUNBUFFERED", "PATH"),
)
RESERVED = frozenset(v.name for v in TABLE if v.reserved)


def rank_env(*, rank: int, world_size: int, nproc_per_node: int, master: tuple[str, int],
             restarts: int, max_restarts: int, job_id: str) -> dict[str, str]:
    """torch.distributed's variables for one rank, named as torchrun names them (one role,
    "default"; a node is torchrun's group)."""
    return {"RANK": str(rank), "WORLD_SIZE": str(world_size),
            "LOCAL_RANK": str(rank % nproc_per_node), "LOCAL_WORLD_SIZE": str(nproc_per_node),
            "GROUP_RANK": str(rank // nproc_per_node),
            "GROUP_WORLD_SIZE": str(max(1, world_size // nproc_per_node)),
            "ROLE_RANK": str(rank), "ROLE_WORLD_SIZE": str(world_size), "ROLE_NAME": "default",
            "MASTER_ADDR": master[0], "MASTER_PORT": str(master[1]),
            # torchrun counts restarts charged to --max-restarts, not membership changes
            "TORCHELASTIC_RESTART_COUNT": str(restarts),
            "TORCHELASTIC_MAX_RESTARTS": str(max_restarts),
            "TORCHELASTIC_RUN_ID": job_id,
            # rank 0 hosts the store at MASTER_ADDR:MASTER_PORT (no torchrun agent holds it)
            "TORCHELASTIC_USE_AGENT_STORE": "False"}



def replica_env(*, host: str, rank: int, lighthouse: str, min_replicas: int, joining: bool,
                replica_only: bool, replicas: int, pause_s: float,
                rust_log: str = "warn") -> dict[str, str]:
    """What a torchft replica needs. An in-process worker is one replica (a group of one
    process): for a replica-only worker RANK/WORLD_SIZE describe that group and
    REPLICA_GROUP_ID is its unique id in the job; in auto mode the group-wide variables stay
    for a script that takes the restart path."""
    env = {"REPLICA_GROUP_ID": str(rank), "TORCHFT_LIGHTHOUSE": lighthouse,
           # Retry quorum forever: the Lighthouse may be restarted under a running job.
           "TORCHFT_QUORUM_RETRIES": "1000000",
           "COORD_FT_MODE": "inprocess" if replica_only else "auto",
           "COORD_FT_JOIN": "1" if joining else "0",
           "COORD_FT_MIN_REPLICAS": str(min_replicas),
           # How many replicas the generation starts with: until all have met, a growing
           # quorum is the start, not a re-formation (trainer/elastic/inprocess.py).
           "COORD_FT_REPLICAS": str(replicas),
           # How long a stalled step may be before the worker voids it (docs/fencing.md).
           "COORD_PAUSE_S": f"{pause_s:g}",
           "RUST_LOG": rust_log}  # torchft logs every quorum at info
    if replica_only:
        env |= {"RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": host, "MASTER_PORT": "0",
                "ROLE_RANK": "0", "ROLE_WORLD_SIZE": "1"}
    return env



# The agent's join token: a job's code has no business holding it.
AGENT_SECRETS = frozenset({"COORD_TOKEN"})
# What torchrun sets for its workers unless set already (set by the agent rather than in
# coordd's StartWorkers so that a warm interpreter, started before any job, has it too).
TORCHRUN_DEFAULTS = {"TORCH_NCCL_ASYNC_ERROR_HANDLING": "1"}


def node_env(job_env: dict[str, str], workers: int = 1,
             cpus: int | None = None) -> dict[str, str]:
    """The agent's environment less its token, its Python first on PATH (`python` in a
    job means the node's environment, where coord and torch are installed), then the job's
    variables, then a thread count for each of the node's `workers` unless one is set."""
    path = os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "")])
    inherited = {k: v for k, v in os.environ.items() if k not in AGENT_SECRETS}
    env = {**TORCHRUN_DEFAULTS, **inherited, "PATH": path, "PYTHONUNBUFFERED": "1", **job_env}
    return env | thread_env(env, workers, cpus)


def thread_env(env: dict[str, str], workers: int, cpus: int | None) -> dict[str, str]:
    """OMP_NUM_THREADS as torchrun sets it (1 when a node runs several workers), or the
    node's share of cores split among its workers; never over a value already set. Without
    it every worker's torch uses every core of the host, and they slow each other down."""
    if "OMP_NUM_THREADS" in env:
        return {}
    if cpus is not None:
        return {"OMP_NUM_THREADS": str(max(1, cpus // max(1, workers)))}
    return {"OMP_NUM_THREADS": "1"} if workers > 1 else {}


# Parsers ---------------------------------------------------------------------------------
DEFAULT_CHECKPOINT_DIR = "checkpoints"
LIFELINE_FD = "COORD_LIFELINE_FD"  # the worker's end of its agent's lifeline (agent/lifeline.py)


class WorkerEnvError(ValueError):
    """A worker variable is missing or inconsistent; the message names it."""


@dataclass(frozen=True)
class WorkerEnv:
    """Who this worker is and where the shared state lives. A script run by hand (no RANK)
    is a single-process job, so that the same training script works outside coord too."""

    rank: int
    world_size: int
    local_rank: int
    local_world_size: int
    group_rank: int
    master_addr: str
    master_port: int | None
    job_id: str
    generation: int
    checkpoint_dir: Path
    node_id: str
    standalone: bool
    snapshot_dir: Path | None = None  # node-local memory for per-step snapshots

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None) -> WorkerEnv:
        """Parse the coord/torchrun variables; defaults describe a single local process."""
        env = os.environ if environ is None else environ
        port = env.get("MASTER_PORT")
        value = cls(
            rank=_int(env, "RANK", 0),
            world_size=_int(env, "WORLD_SIZE", 1),
            local_rank=_int(env, "LOCAL_RANK", 0),
            local_world_size=_int(env, "LOCAL_WORLD_SIZE", 1),
            group_rank=_int(env, "GROUP_RANK", 0),
            master_addr=env.get("MASTER_ADDR", "127.0.0.1"),
            master_port=None if port is None else _int(env, "MASTER_PORT", 0),
            job_id=env.get("COORD_JOB_ID", "local"),
            generation=_int(env, "COORD_GENERATION", 0),
            checkpoint_dir=Path(env.get("COORD_CHECKPOINT_DIR", DEFAULT_CHECKPOINT_DIR)),
            node_id=env.get("COORD_NODE_ID", "local"),
            standalone="RANK" not in env,
            snapshot_dir=Path(env["COORD_SNAPSHOT_DIR"]) if env.get("COORD_SNAPSHOT_DIR") else None,
        )
        value.validate()
        return value

    def validate(self) -> None:
        """Refuse impossible combinations early, with the variable named in the message."""
        if self.world_size < 1:
            raise WorkerEnvError(f"WORLD_SIZE must be >= 1, got {self.world_size}")
        if not 0 <= self.rank < self.world_size:
            raise WorkerEnvError(f"RANK must be in [0, WORLD_SIZE={self.world_size}), "
                                 f"got {self.rank}")
        if not self.standalone and self.master_port is None:
            raise WorkerEnvError("MASTER_PORT is not set")
        if self.generation < 0:
            raise WorkerEnvError(f"COORD_GENERATION must be >= 0, got {self.generation}")

    @property
    def is_leader(self) -> bool:
        """Rank 0 is the only writer of checkpoints and of the step log."""
        return self.rank == 0


@dataclass(frozen=True)
class ReplicaEnv:
    """What coord tells an in-process (torchft) worker."""

    replica: int  # unique in the job, never reused
    local_rank: int  # which GPU on this node
    lighthouse: str
    min_replicas: int
    joining: bool  # started into a running quorum: heal from a peer, not from disk
    host: str  # address peers reach this worker at (store, manager, checkpoint server)
    generation: int
    checkpoint_dir: Path
    node_id: str
    job_id: str = ""  # the FENCE owner its durable checkpoints commit for
    launched: int = 0  # replicas its generation was started with (0: not known)
    pause_s: float = 2.0  # see trainer.elastic.inprocess.InProcessConfig.pause_s

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None) -> ReplicaEnv:
        env = os.environ if environ is None else environ
        if not env.get("TORCHFT_LIGHTHOUSE"):
            raise WorkerEnvError("TORCHFT_LIGHTHOUSE is not set: in-process mode needs "
                                 "the job's quorum service ([fault_tolerance] mode)")
        return cls(replica=_int(env, "REPLICA_GROUP_ID", 0),
                   local_rank=_int(env, "LOCAL_RANK", 0),
                   lighthouse=env["TORCHFT_LIGHTHOUSE"],
                   min_replicas=_int(env, "COORD_FT_MIN_REPLICAS", 1),
                   joining=env.get("COORD_FT_JOIN", "0") == "1",
                   host=env.get("COORD_NODE_HOST") or env.get("MASTER_ADDR", "127.0.0.1"),
                   generation=_int(env, "COORD_GENERATION", 0),
                   checkpoint_dir=Path(env.get("COORD_CHECKPOINT_DIR", DEFAULT_CHECKPOINT_DIR)),
                   node_id=env.get("COORD_NODE_ID", "local"),
                   job_id=env.get("COORD_JOB_ID", ""),
                   launched=_int(env, "COORD_FT_REPLICAS", 0),
                   pause_s=_float(env, "COORD_PAUSE_S", 2.0))


def _int(env: Mapping[str, str], key: str, default: int) -> int:
    raw = env.get(key)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError as exc:
        raise WorkerEnvError(f"{key} must be an integer, got {raw!r}") from exc


def _float(env: Mapping[str, str], key: str, default: float) -> float:
    raw = env.get(key)
    if raw is None or raw == "":
        return default
    try:
        return float(raw)
    except ValueError as exc:
        raise WorkerEnvError(f"{key} must be a number, got {raw!r}") from exc
