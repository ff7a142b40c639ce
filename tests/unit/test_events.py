"""The events a job's log holds, as contract/events.py types them: every writer's payload
reads back as written; a row of another coordd version loads; a malformed row or an unknown
kind is named, never a crash, in the SDK, `coord status`, the dashboard and the runner's
restore; docs/events.md lists every kind and field."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from contract import events as ev
from contract.errors import BadEvent
from contract.states import JobState, NodeState
from coord.v1 import types_pb2
from coordinator.client import cli
from coordinator.client.sdktypes import Job, JobEvent, as_dict, reformations
from coordinator.dashboard import history, views
from coordinator.reconciler import journal
from coordinator.reconciler.decide import decide
from coordinator.reconciler.reduce import evolve
from coordinator.reconciler.resume import ResumeState
from coordinator.reconciler.view import JobView, WorkerExit
from coordinator.store import EventRecord
from tests.unit.test_decide import AUTO, POLICY
from tests.unit.test_decide import Job as SimJob
from tests.unit.test_decide import join

DOCS = Path(__file__).resolve().parents[2] / "docs" / "events.md"
NODE = "node-a"
# One payload of each kind, as its writer builds it.
SAMPLES: dict[str, ev.Payload] = {
    ev.STATE: ev.StateChanged(new="PENDING", overrides=["--nodes 1"]),
    ev.GENERATION_STARTED: ev.GenerationStarted(
        cause="start", old_members=[], new_members=[NODE], world_size=1, master="h:1",
        took_s=0, epoch=1, worker_generation=1),
    ev.GENERATION_REFORMED: ev.GenerationReformed(
        cause="node_lost", old_members=[NODE, "b"], new_members=[NODE], added=[],
        world_size=1, epoch=2, worker_generation=1, slots={NODE: 0}, took_s=0.25),
    ev.GENERATION_STOPPING: ev.NodesNamed(nodes=[NODE]),
    ev.NODES_STOPPING: ev.NodesNamed(nodes=[NODE]),
    ev.NODES_REQUESTED: ev.NodesRequested(count=2),
    ev.INPROCESS_JOINED: ev.ReplicaReport(worker_generation=1, node=NODE, rank=0),
    ev.INPROCESS_CONFIRMED: ev.InProcessConfirmed(worker_generation=1),
    ev.TRAINING_FINISHED: ev.ReplicaReport(worker_generation=1, node=NODE, rank=0),
    ev.CHECKPOINT_COMMITTED: ev.StepReport(worker_generation=1, step=40),
    ev.TRAINING_RESUMED: ev.StepReport(worker_generation=2, step=40),
    ev.COORDD_STOPPED: ev.CoorddStopped(resume=True, checkpoint_step=40),
    ev.JOB_RESUMING: ev.JobResuming(checkpoint_step=40),
    ev.PROVIDER_ERROR: ev.ProviderFailed(error="no capacity"),
    ev.RESOURCES_TIGHT: ev.Notice(),
    ev.AUTO_RESTART: ev.AutoRestarted(reason="torchft is not installed"),
    ev.QUORUM_STARTED: ev.QuorumStarted(address="h:29510"),
    ev.QUORUM_DIED: ev.QuorumDied(code=-9, address="h:29510", restarts=1),
    ev.PROVIDER_WARNING: ev.Notice(),
    ev.PROVIDER_CAPACITY: ev.LaunchMissed(node=NODE, choice=0, code="InsufficientCapacity"),
    ev.PROVIDER_CHOICE_REFUSED: ev.LaunchMissed(node=NODE, choice=1, code="Unsupported"),
    ev.PROVIDER_LAUNCHED: ev.NodeLaunched(
        node=NODE, instance_id="i-1", instance_type="g5.xlarge", availability_zone="z",
        subnet_id="s", market="spot", choice=0),
    ev.SSH_BOOTSTRAP: ev.SshBootstrapped(node=NODE, host="gpu-1"),
    ev.SLURM_SUBMITTED: ev.SlurmJob(node=NODE, slurm_job="12"),
    ev.SLURM_QUEUED: ev.SlurmQueued(node=NODE, slurm_job="12", reason="Priority"),
    ev.SLURM_RUNNING: ev.SlurmJob(node=NODE, slurm_job="12"),
    ev.SLURM_NODE_LOST: ev.SlurmNodeLost(node=NODE),
    ev.NODE_LEAVING: ev.NodeReport(node=NODE),
    ev.SPOT_REBALANCE: ev.NodeReport(node=NODE),
}


def record(seq: int, kind: str, data_json: str, generation: int = 1) -> EventRecord:
    return EventRecord(seq, "j", 100.0 + seq, kind, generation, f"message {seq}", data_json)


def sdk_event(seq: int, kind: str, data_json: str) -> JobEvent:
    return JobEvent.from_proto(types_pb2.JobEvent(seq=seq, job_id="j", kind=kind, generation=1,
                                                  message=f"message {seq}",
                                                  data_json=data_json))


# the table and its writers ---------------------------------------------------------------
def test_every_kind_has_a_sample_and_reads_back_as_written():
    assert set(SAMPLES) == set(ev.PAYLOADS)
    for kind, payload in SAMPLES.items():
        assert ev.parse(kind, ev.encode(kind, payload)) == payload, kind


class Journalled(SimJob):
    """The real decide + evolve, keeping each action's events as the runner would write."""
    entries: list[journal.Entry]

    def step(self, now: float) -> list:
        self.entries = getattr(self, "entries", [])
        actions = decide(self.view, now)
        for action in actions:
            old, self.view = self.view, evolve(self.view, action, now)
            self.entries += journal.entries(old, action, self.view, now, ("host", 29500))
        return actions


def journalled(policy) -> Journalled:
    """A job of `policy` from its submit to its first generation, its events kept."""
    job = Journalled(JobView("j", JobState.PENDING, 0, 0, policy))
    job.step(0)
    for i in range(policy.target):
        join(job, f"n{i}", 1)
    job.step(1)
    return job


def test_the_reconcilers_events_read_back_as_written_as_before_the_models():
    restart = journalled(POLICY)
    restart.node("n1", NodeState.LOST)
    restart.step(10)
    inprocess = journalled(AUTO)
    inprocess.joined_quorum(0, 1, 2)
    inprocess.step(2)
    inprocess.node("n0", NodeState.DRAINING)
    inprocess.step(10)
    inprocess.exit(WorkerExit("n0", 0, 0, 11))
    inprocess.step(11)
    join(inprocess, "n3", 12)
    inprocess.step(12)
    entries = restart.entries + inprocess.entries
    assert {e.kind for e in entries} >= {
        ev.STATE, ev.GENERATION_STARTED, ev.GENERATION_REFORMED, ev.GENERATION_STOPPING,
        ev.NODES_STOPPING, ev.NODES_REQUESTED, ev.INPROCESS_CONFIRMED}
    for entry in entries:
        stored = ev.encode(entry.kind, entry.payload)
        assert ev.parse(entry.kind, stored) == entry.payload
    # the keys written are the keys written before the models: a short state keeps two
    [short] = [e for e in restart.entries if e.message == "PROVISIONING -> RUNNING"]
    assert json.loads(ev.encode(short.kind, short.payload)) == {"old": "PROVISIONING",
                                                                "new": "RUNNING"}


def test_a_writer_cannot_store_another_kinds_payload_or_a_wrong_type():
    with pytest.raises(TypeError, match="'generation.started' takes a GenerationStarted"):
        ev.encode(ev.GENERATION_STARTED, ev.GenerationReformed())
    with pytest.raises(ValueError, match="new_members"):
        ev.GenerationStarted(new_members=("a",))  # a tuple is not the list readers expect
    # what an agent reports under a kind of its own is kept, with the node it came from; an
    # agent never writes one of coordd's kinds
    assert json.loads(ev.encode("worker.custom", ev.FORWARDED(node=NODE))) == {"node": NODE}
    assert [k for k in ev.PAYLOADS if ev.forwardable(k)] == [ev.NODE_LEAVING, ev.SPOT_REBALANCE]
    assert ev.forwardable("worker.custom") and not ev.forwardable(ev.GENERATION_STARTED)


# rows of other coordd versions, malformed rows -----------------------------------------
def test_keys_a_newer_coordd_adds_are_ignored_and_those_an_older_one_lacked_take_defaults():
    newer = ev.parse(ev.GENERATION_STARTED, '{"cause": "node_lost", "new_members": ["a"], '
                     '"took_s": 3, "straggler_s": 1.5}')
    assert newer == ev.GenerationStarted(cause="node_lost", new_members=["a"], took_s=3.0)
    older = ev.parse(ev.GENERATION_STARTED, '{"cause": "start"}')
    assert isinstance(older, ev.GenerationStarted) and older.worker_generation is None


@pytest.mark.parametrize("kind, data_json, error", [
    (ev.GENERATION_REFORMED, '{"new_members": "a,b"}',
     "event 'generation.reformed': field 'new_members': Input should be a valid list"),
    (ev.GENERATION_REFORMED, '{"slots": {"a": "zero"}}',
     "event 'generation.reformed': field 'slots.a': Input should be a valid integer"),
    (ev.INPROCESS_JOINED, '{"node": "a", "rank": 0}',
     "event 'inprocess.joined': field 'worker_generation': Field required"),
    (ev.COORDD_STOPPED, '{"resume": "yes"}',
     "event 'coordd.stopped': field 'resume': Input should be a valid boolean"),
    (ev.QUORUM_DIED, "not json", "event 'quorum.died': its data is not JSON"),
    (ev.STATE, "[1, 2]", "event 'state': its data is not a JSON object"),
])
def test_a_malformed_row_is_an_error_naming_the_kind_and_the_field(kind, data_json, error):
    with pytest.raises(BadEvent, match=re.escape(error)):
        ev.decode(kind, data_json)
    unknown = ev.parse(kind, data_json)  # what readers call: never raises
    assert isinstance(unknown, ev.Unknown) and unknown.error.startswith(error)


def test_a_kind_this_reader_does_not_know_is_kept_as_it_came():
    assert ev.parse("quota.exceeded", '{"limit": 3}') == ev.Unknown("quota.exceeded",
                                                                     {"limit": 3})


# each reader ----------------------------------------------------------------------------
GOOD = '{"cause": "node_lost", "old_members": ["a", "b"], "new_members": ["a"], ' \
       '"worker_generation": 2}'
BAD = '{"cause": "node_joined", "new_members": "a,b"}'


def test_the_sdk_keeps_every_event_and_types_those_it_can():
    events = [sdk_event(1, ev.GENERATION_STARTED, GOOD), sdk_event(2, ev.GENERATION_REFORMED, BAD),
              sdk_event(3, "quota.exceeded", '{"limit": 3}'), sdk_event(4, ev.QUORUM_DIED, "{")]
    assert [type(e.payload) for e in events] == [ev.GenerationStarted] + [ev.Unknown] * 3
    assert events[1].data == {"cause": "node_joined", "new_members": "a,b"}  # as stored
    assert "field 'new_members'" in events[1].payload.error and not events[2].payload.error
    assert events[3].data == {} and "not JSON" in events[3].payload.error
    [only] = reformations(events)
    assert (only.cause, only.worker_generation, only.new_members) == ("node_lost", 2, ["a"])
    assert "payload" not in as_dict(events[0])  # `coord status -o json` prints what it did


def test_coord_status_names_an_unreadable_event_and_shows_the_rest(capsys):
    job = Job.from_proto(types_pb2.Job(id="j", state=types_pb2.JOB_STATE_RUNNING))
    events = [sdk_event(1, ev.STATE, '{"new": "PENDING", "overrides": ["--nodes 1"]}'),
              sdk_event(2, ev.GENERATION_STARTED, GOOD),
              sdk_event(3, ev.GENERATION_REFORMED, BAD),
              sdk_event(4, "quota.exceeded", "{}")]
    cli._job_detail(job, events)
    out = capsys.readouterr().out
    assert "overrides: --nodes 1" in out and "restart  node_lost" in out
    assert "event 3 unreadable: event 'generation.reformed': field 'new_members'" in out
    assert "event 4" not in out  # a newer coordd's kind: nothing wrong with it


def test_the_dashboard_marks_an_unreadable_event_and_leaves_it_out_of_the_history():
    rows = [record(1, ev.GENERATION_STARTED, GOOD), record(2, ev.GENERATION_REFORMED, BAD),
            record(3, "quota.exceeded", "{}")]
    assert [r["cause"] for r in history.reformations(rows, [])] == ["node_lost"]
    assert history.members_over_time(rows, 200.0) == [[101.0, 1], [200.0, 1]]
    marks = [views.event_row(r)["unreadable"] for r in rows]
    assert marks[0] == marks[2] == "" and "field 'new_members'" in marks[1]


def test_a_restarted_coordd_skips_a_malformed_checkpoint_row_and_keeps_the_rest():
    state = ResumeState()
    state.replay([record(1, ev.CHECKPOINT_COMMITTED, '{"worker_generation": 1, "step": "40"}'),
                  record(2, ev.CHECKPOINT_COMMITTED, '{"worker_generation": 1, "step": 30}'),
                  record(3, ev.COORDD_STOPPED, '{"resume": true, "checkpoint_step": 30}')])
    assert state.checkpoint_step == 30 and state.expected_from == 30


# the reference --------------------------------------------------------------------------
def test_docs_list_every_kind_with_every_field_of_its_payload():
    rows = [line for line in DOCS.read_text().splitlines() if line.startswith("| `")]
    missing = []
    for kind, model in ev.PAYLOADS.items():
        row = next((r for r in rows if f"`{kind}`" in r.split(" | ")[0]), "")
        missing += [f"{kind} {field}".strip() for field in ["", *model.model_fields]
                    if not row or f"`{field}`" not in row and field]
    assert missing == []
