"""What the reconciler knows about a job's checkpoints across a clean coordd stop: when the
job resumes, when it must fail, and that a stop before the runner's first turn knows too."""

from __future__ import annotations

import json
import time

from contract import events as ev
from contract.events import CHECKPOINT_COMMITTED as CHECKPOINTED
from contract.events import COORDD_STOPPED as STOPPED
from contract.events import TRAINING_RESUMED as RESUMED
from contract.spec import JobSpec
from contract.states import JobState
from coordinator.bus import Bus
from coordinator.jobs import JobManager
from coordinator.metrics import Metrics
from coordinator.nodes import NodeRegistry
from coordinator.reconciler import plan
from coordinator.reconciler.decide import decide
from coordinator.reconciler.events import FailJob
from coordinator.reconciler.resume import CheckpointCommitted, ResumeState, WorkerRestored
from coordinator.settings import CoorddSettings
from coordinator.store import EventRecord, JobRecord, Store
from tests.unit.test_decide import running_job


def event(kind: str, **data) -> EventRecord:
    return EventRecord(job_id="j", seq=0, time=0.0, kind=kind, generation=0, message="",
                       data_json=json.dumps(data))


def stopped_at(step: int) -> ResumeState:
    """A job that checkpointed `step` in worker generation 1, then a clean stop."""
    state = ResumeState()
    state.replay([event(CHECKPOINTED, worker_generation=1, step=step),
                  event(STOPPED, resume=True, checkpoint_step=step)])
    return state


def test_replay_knows_the_checkpoint_and_the_promise_of_a_stop():
    state = stopped_at(40)
    assert state.checkpoint_step == 40 and state.expected_from == 40
    state.replay([event(RESUMED, worker_generation=2, step=40)])
    assert state.expected_from is None and not state.started_over
    assert state.restored_in == {2}


def test_a_resume_from_the_promised_step_is_recorded_once_per_generation():
    state = stopped_at(40)
    assert state.restored(WorkerRestored(2, "n", 0, 40)) is True
    assert state.restored(WorkerRestored(2, "n", 1, 40)) is False
    assert not state.started_over and state.expected_from is None


def test_a_fresh_start_after_the_promise_fails_the_job():
    state = stopped_at(40)
    assert state.restored(WorkerRestored(2, "n", 0, 0)) is False
    assert "would start over at step 0" in state.started_over
    assert "step 40" in state.started_over


def test_a_step_zero_checkpoint_resumed_from_is_not_starting_over():
    state = stopped_at(0)
    state.restored(WorkerRestored(2, "n", 0, 0))
    assert not state.started_over and state.expected_from is None


def test_a_fresh_start_without_a_promise_is_fine():
    state = ResumeState()
    assert state.restored(WorkerRestored(1, "n", 0, 0)) is False
    assert not state.started_over


def test_without_a_restored_line_a_new_generations_first_checkpoint_tells():
    state = stopped_at(40)
    assert state.first_checkpoint(CheckpointCommitted(2, "n", 0, 60)) is True
    assert not state.started_over and state.expected_from is None
    assert state.checkpoint_step == 60

    state = stopped_at(40)
    assert state.first_checkpoint(CheckpointCommitted(1, "n", 0, 10)) is False  # an old one
    assert not state.started_over
    assert state.first_checkpoint(CheckpointCommitted(2, "n", 0, 20)) is True
    assert "would start over" in state.started_over


def test_a_fail_reason_fails_the_job():
    view = running_job()
    view.hear(FailJob("its workers found no checkpoint"))
    actions = decide(view.view, time.time())
    assert plan.Transition(JobState.FAILED, reason="its workers found no checkpoint") in actions


async def test_a_stop_before_the_runners_first_turn_keeps_a_resumable_job(tmp_path, store_url):
    """coordd started on a state dir holding a job that a clean stop left to resume, and
    stopped at once: the job is again left to resume, not failed for want of a checkpoint."""
    settings = CoorddSettings(state_dir=tmp_path)
    store = await Store.open(store_url)
    spec = JobSpec(name="j", run="true")
    job = JobRecord(id="j-1", name="j", spec_json=spec.to_json(), state=JobState.RUNNING,
                    generation=1, node_ids=["n-1"])
    await store.insert_job(job)
    await store.append_event(job.id, CHECKPOINTED, 1, "",
                             ev.StepReport(worker_generation=1, step=40))
    await store.append_event(job.id, STOPPED, 1, "",
                             ev.CoorddStopped(resume=True, checkpoint_step=40))
    jobs = JobManager(store, Bus(), settings, Metrics())
    jobs.attach(NodeRegistry(store, settings, {}, jobs.router.on_node_change, Metrics()))
    try:
        await jobs.resume()
        await jobs.close()
        assert (await store.get_job(job.id)).state == JobState.RUNNING
        stops = [json.loads(e.data_json) for e in await store.events_after(job.id)
                 if e.kind == STOPPED]
        assert stops[-1] == {"resume": True, "checkpoint_step": 40}
    finally:
        await store.close()
