"""The actions `decide` can ask for. The runner executes them in order."""

from __future__ import annotations

import dataclasses

from contract.states import JobState


@dataclasses.dataclass(frozen=True)
class Transition:
    to: JobState
    reason: str = ""
    cause: str = ""


@dataclasses.dataclass(frozen=True)
class StartGeneration:
    node_ids: tuple[str, ...]
    cause: str


@dataclasses.dataclass(frozen=True)
class StopGeneration:
    reason: str
    grace_s: float | None = None  # SIGTERM to SIGKILL; None: coordd's stop_grace_s


@dataclasses.dataclass(frozen=True)
class Reform:
    """In-process mode: the running replicas re-form in place as `members`; no running
    worker is restarted. Workers are started only on `added` nodes (new members, or members
    whose workers failed and restart in place), which join the running quorum."""
    members: tuple[str, ...]
    added: tuple[str, ...]
    cause: str
    reason: str


@dataclasses.dataclass(frozen=True)
class StopNodes:
    """In-process mode: stop the workers of these nodes only (a leaving node, or one above
    the job's target); each leaves the quorum at a step boundary."""
    node_ids: tuple[str, ...]
    reason: str


@dataclasses.dataclass(frozen=True)
class ConfirmInProcess:
    """Auto mode: every worker took part in a step as an in-process replica; from now a node
    loss re-forms in place."""


@dataclasses.dataclass(frozen=True)
class Acquire:
    count: int
    reason: str


@dataclasses.dataclass(frozen=True)
class Release:
    node_ids: tuple[str, ...]
    reason: str


@dataclasses.dataclass(frozen=True)
class ChargeRestart:
    pass


@dataclasses.dataclass(frozen=True)
class MarkBelowMinimum:
    since: float | None


Action = (Transition | StartGeneration | StopGeneration | Reform | StopNodes | ConfirmInProcess
          | Acquire | Release | ChargeRestart | MarkBelowMinimum)
