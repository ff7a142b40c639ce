"""The worker's environment, read once into a typed, immutable value.

coord's agent sets these variables for every worker. A script run by hand (no RANK) is treated
as a single-process job so that the same training script works outside coord too.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from .errors import EnvironmentConfigError

DEFAULT_CHECKPOINT_DIR = "checkpoints"


@dataclass(frozen=True)
class WorkerEnv:
    """Who this worker is and where the shared state lives."""

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
        standalone = "RANK" not in env
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
            standalone=standalone,
            snapshot_dir=Path(env["COORD_SNAPSHOT_DIR"]) if env.get("COORD_SNAPSHOT_DIR") else None,
        )
        value.validate()
        return value

    def validate(self) -> None:
        """Refuse impossible combinations early, with the variable named in the message."""
        if self.world_size < 1:
            raise EnvironmentConfigError(f"WORLD_SIZE must be >= 1, got {self.world_size}")
        if not 0 <= self.rank < self.world_size:
            raise EnvironmentConfigError(
                f"RANK must be in [0, WORLD_SIZE={self.world_size}), got {self.rank}")
        if not self.standalone and self.master_port is None:
            raise EnvironmentConfigError("MASTER_PORT is not set")
        if self.generation < 0:
            raise EnvironmentConfigError(f"COORD_GENERATION must be >= 0, got {self.generation}")

    @property
    def is_leader(self) -> bool:
        """Rank 0 is the only writer of checkpoints and of the step log."""
        return self.rank == 0


def _int(env: Mapping[str, str], key: str, default: int) -> int:
    raw = env.get(key)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError as exc:
        raise EnvironmentConfigError(f"{key} must be an integer, got {raw!r}") from exc
