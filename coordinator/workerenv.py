"""The worker environment: one table of every variable coord sets for a worker, and the
builder coordd uses for each rank. A job's [env] may not set a reserved name (spec.py derives
RESERVED_ENV from this table); docs/worker-environment.md documents each row.

The agent adds the rows marked "agent" on the node (it alone knows the node's memory and
cores); the trainer library parses the rows it needs (trainer/elastic/env.py).
"""

from __future__ import annotations

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

