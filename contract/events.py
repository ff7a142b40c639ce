"""A job's events: every kind coord writes, and the shape of each one's JSON payload.

coordd appends an event (kind, message, generation, payload) to a job's log for what it
decided and what it heard; `coord status`, the SDK, the dashboard and a restarted coordd read
them back. This module is the one table of kinds and payload models both sides use
(docs/events.md lists them for people):

- writers build a payload model and the store turns it into JSON with `encode`, which refuses
  a payload that is not its kind's: a writer cannot emit what its readers would refuse;
- readers call `parse(kind, data_json)`. Keys a model does not know (a newer coordd's) are
  ignored and keys it lacks take their defaults (an older coordd's), but a wrong type is an
  error naming the kind and the field. `parse` never raises: an unknown kind (a newer coordd)
  or a malformed row comes back as `Unknown`, holding the raw data and, for a malformed row,
  that error.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from contract.errors import BadEvent

# The kinds. The job's reconciler (coordinator/reconciler/journal.py, runner.py):
STATE = "state"                                  # the job changed state; the first is the submit
GENERATION_STARTED = "generation.started"        # a restart: every worker starts again
GENERATION_REFORMED = "generation.reformed"      # in place: the running workers keep running
GENERATION_STOPPING = "generation.stopping"
NODES_STOPPING = "nodes.stopping"
NODES_REQUESTED = "nodes.requested"
INPROCESS_JOINED = "inprocess.joined"
INPROCESS_CONFIRMED = "inprocess.confirmed"
TRAINING_FINISHED = "training.finished"
CHECKPOINT_COMMITTED = "checkpoint.committed"    # a worker generation's first checkpoint
TRAINING_RESUMED = "training.resumed"            # a worker generation resumed from a checkpoint
COORDD_STOPPED = "coordd.stopped"                # a clean stop, and what it does to the job
JOB_RESUMING = "job.resuming"                    # the next start: the job will resume
PROVIDER_ERROR = "provider.error"
# Admission, launching and the quorum service:
RESOURCES_TIGHT = "resources.tight"              # the nodes fit the machine, not its memory now
AUTO_RESTART = "mode.restart"                    # mode "auto" runs a generation in restart mode
QUORUM_STARTED = "quorum.started"
QUORUM_DIED = "quorum.died"
# Providers:
PROVIDER_WARNING = "provider.warning"
PROVIDER_CAPACITY = "provider.capacity"
PROVIDER_CHOICE_REFUSED = "provider.choice_refused"
PROVIDER_LAUNCHED = "provider.launched"
SSH_BOOTSTRAP = "ssh.bootstrap"
SLURM_SUBMITTED = "slurm.submitted"
SLURM_QUEUED = "slurm.queued"
SLURM_RUNNING = "slurm.running"
SLURM_NODE_LOST = "slurm.node_lost"
# What agents report, recorded as they name it (another kind an agent sends, e.g. a worker's
# own control line `::coord::KIND`, is recorded as `worker.KIND` with the same payload):
NODE_LEAVING = "node.leaving"
SPOT_REBALANCE = "spot.rebalance"


class Payload(BaseModel):
    """The base of every payload model. Strict: a writer passes the right types."""
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class StateChanged(Payload):
    """`old` -> `new` (JobState names); the submit's has `new` and `overrides` only."""
    old: str = ""
    new: str = ""
    cause: str = ""                 # see docs/events.md: start, node_lost, ..., submitted
    reason: str = ""
    overrides: list[str] = []       # the submit: the flags `coord submit` was given


class GenerationStarted(Payload):
    cause: str = ""
    old_members: list[str] = []
    new_members: list[str] = []
    world_size: int = 0
    master: str = ""                # host:port of the rendezvous
    took_s: float = 0.0             # RECONFIGURING -> RUNNING
    epoch: int | None = None        # the membership epoch (None: a coordd before it was kept)
    worker_generation: int | None = None


class GenerationReformed(Payload):
    cause: str = ""
    old_members: list[str] = []
    new_members: list[str] = []
    added: list[str] = []
    world_size: int = 0
    epoch: int | None = None
    worker_generation: int | None = None
    slots: dict[str, int] = {}      # node -> its replica slot
    took_s: float = 0.0             # from the report to the re-formation


class NodesNamed(Payload):
    """generation.stopping, nodes.stopping: the nodes whose workers are being stopped."""
    nodes: list[str] = []


class NodesRequested(Payload):
    count: int


class InProcessConfirmed(Payload):
    worker_generation: int


class ReplicaReport(Payload):
    """inprocess.joined, training.finished: what one worker reported once."""
    worker_generation: int
    node: str
    rank: int


class StepReport(Payload):
    """checkpoint.committed, training.resumed: the step of a worker generation's checkpoint."""
    worker_generation: int
    step: int = 0


class CoorddStopped(Payload):
    resume: bool = False            # the job resumes at coordd's next start (else it failed)
    checkpoint_step: int | None = None


class JobResuming(Payload):
    checkpoint_step: int | None = None


class ProviderFailed(Payload):
    error: str = ""


class Notice(Payload):
    """resources.tight, provider.warning: the message says it all."""


class AutoRestarted(Payload):
    reason: str = ""


class QuorumStarted(Payload):
    address: str = ""


class QuorumDied(Payload):
    code: int | None = None         # the Lighthouse's exit code
    address: str = ""
    restarts: int = 0


class LaunchMissed(Payload):
    """provider.capacity, provider.choice_refused (aws): launch choice `choice` missed."""
    node: str
    choice: int = 0
    code: str = ""                  # EC2's error code


class NodeLaunched(Payload):
    node: str
    instance_id: str = ""
    instance_type: str = ""
    availability_zone: str = ""
    subnet_id: str = ""
    market: str = ""                # spot | on-demand
    choice: int = 0


class SshBootstrapped(Payload):
    node: str
    host: str = ""                  # the ssh host's name in coordd's config


class SlurmJob(Payload):
    """slurm.submitted, slurm.running: the Slurm job that holds a node."""
    node: str
    slurm_job: str = ""


class SlurmQueued(Payload):
    node: str
    slurm_job: str = ""
    reason: str = ""                # Slurm's pending reason


class SlurmNodeLost(Payload):
    node: str = ""


class NodeReport(Payload):
    """node.leaving, spot.rebalance and what else an agent reports: the node it came from."""
    node: str = ""


PAYLOADS: dict[str, type[Payload]] = {
    STATE: StateChanged, GENERATION_STARTED: GenerationStarted,
    GENERATION_REFORMED: GenerationReformed, GENERATION_STOPPING: NodesNamed,
    NODES_STOPPING: NodesNamed, NODES_REQUESTED: NodesRequested,
    INPROCESS_JOINED: ReplicaReport, INPROCESS_CONFIRMED: InProcessConfirmed,
    TRAINING_FINISHED: ReplicaReport, CHECKPOINT_COMMITTED: StepReport,
    TRAINING_RESUMED: StepReport, COORDD_STOPPED: CoorddStopped, JOB_RESUMING: JobResuming,
    PROVIDER_ERROR: ProviderFailed, RESOURCES_TIGHT: Notice, AUTO_RESTART: AutoRestarted,
    QUORUM_STARTED: QuorumStarted, QUORUM_DIED: QuorumDied, PROVIDER_WARNING: Notice,
    PROVIDER_CAPACITY: LaunchMissed, PROVIDER_CHOICE_REFUSED: LaunchMissed,
    PROVIDER_LAUNCHED: NodeLaunched, SSH_BOOTSTRAP: SshBootstrapped,
    SLURM_SUBMITTED: SlurmJob, SLURM_QUEUED: SlurmQueued, SLURM_RUNNING: SlurmJob,
    SLURM_NODE_LOST: SlurmNodeLost, NODE_LEAVING: NodeReport, SPOT_REBALANCE: NodeReport,
}
# A kind outside the table may be written only with this payload: an agent's report that
# coordd records as the agent named it.
FORWARDED = NodeReport


def forwardable(kind: str) -> bool:
    """Whether coordd records an agent's report of `kind` (never one of its own kinds)."""
    return PAYLOADS.get(kind, FORWARDED) is FORWARDED


@dataclasses.dataclass(frozen=True)
class Unknown:
    """An event this reader cannot type: a kind it does not know (`error` empty: a newer
    coordd's), or a malformed row of a known kind (`error` says what is wrong)."""
    kind: str
    data: dict[str, Any]
    error: str = ""


def encode(kind: str, payload: Payload) -> str:
    """The JSON a writer stores. Only the fields the writer set are written, as before the
    models; a payload of another kind's model is a programming error."""
    expected = PAYLOADS.get(kind, FORWARDED)
    if type(payload) is not expected:
        raise TypeError(f"event {kind!r} takes a {expected.__name__} payload, "
                        f"not {type(payload).__name__}")
    return json.dumps(payload.model_dump(mode="json", exclude_unset=True))


def decode(kind: str, data: str | Mapping[str, Any]) -> Payload:
    """The payload of a known kind; BadEvent names the kind and the field when the row does
    not fit its model (KeyError for an unknown kind)."""
    model = PAYLOADS[kind]
    raw = _object(kind, data)
    known = {key: value for key, value in raw.items() if key in model.model_fields}
    try:
        return model.model_validate(known)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(part) for part in first["loc"]) or "(payload)"
        raise BadEvent(f"event {kind!r}: field {field!r}: {first['msg']} "
                       f"(got {first.get('input')!r})") from None


def parse(kind: str, data: str | Mapping[str, Any]) -> Payload | Unknown:
    """What every reader calls: the typed payload, or Unknown (never an exception)."""
    if kind not in PAYLOADS:
        return Unknown(kind, loads(data))
    try:
        return decode(kind, data)
    except BadEvent as exc:
        return Unknown(kind, loads(data), str(exc))


def loads(data: str | Mapping[str, Any]) -> dict[str, Any]:
    """A stored payload as a plain dict: {} for one that is not a JSON object."""
    try:
        return _object("", data)
    except BadEvent:
        return {}


def _object(kind: str, data: str | Mapping[str, Any]) -> dict[str, Any]:
    if isinstance(data, Mapping):
        return dict(data)
    try:
        value = json.loads(data or "{}")
    except ValueError as exc:
        raise BadEvent(f"event {kind!r}: its data is not JSON ({exc})") from None
    if not isinstance(value, dict):
        raise BadEvent(f"event {kind!r}: its data is not a JSON object (got {value!r:.60})")
    return value
