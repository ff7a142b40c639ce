"""Typed errors of the elastic library.

One base class so a training script can catch everything the library raises in one place and
turn it into a process exit code the agent can classify (`ElasticError.exit_code`).
"""

from __future__ import annotations

from contract.exits import CHECKPOINT_EXIT, ELASTIC_ERROR_EXIT, ENVIRONMENT_EXIT, FENCED_EXIT


class ElasticError(Exception):
    """Base of every error raised by `trainer.elastic`."""

    exit_code: int = ELASTIC_ERROR_EXIT


class EnvironmentConfigError(ElasticError):
    """The worker environment (RANK, WORLD_SIZE, ...) is missing or inconsistent."""

    exit_code = ENVIRONMENT_EXIT


class StaleGenerationError(ElasticError):
    """This worker belongs to a generation the coordinator has already replaced.

    Raised instead of committing (or starting) so that a worker that wakes up after its
    generation was fenced off can never overwrite the state of the live generation.
    """

    exit_code = FENCED_EXIT

    def __init__(self, generation: int, fence: int, owner: str = "") -> None:
        taken = f"; job {owner} has taken the checkpoint directory over" if owner else ""
        super().__init__(f"generation {generation} is fenced off (FENCE={fence}{taken})")
        self.generation = generation
        self.fence = fence


class FenceFileError(ElasticError):
    """The FENCE file exists but cannot be read: refuse rather than guess."""

    exit_code = FENCED_EXIT


class CheckpointError(ElasticError):
    """A checkpoint could not be written, or the chosen one could not be read on this rank."""

    exit_code = CHECKPOINT_EXIT


class CommitFailedError(ElasticError):
    """The agreed (stop or final) commit failed on the writing rank; every rank raises it."""

    exit_code = CHECKPOINT_EXIT
