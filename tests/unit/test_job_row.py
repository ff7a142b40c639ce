"""A restarted coordd resumes a job from its row: epoch, worker generation, replica slots
(on SQLite and on PostgreSQL: the store_url fixture)."""

from __future__ import annotations

from contract.spec import JobSpec
from contract.states import JobState
from coordinator.bus import Bus
from coordinator.jobs import JobManager
from coordinator.metrics import Metrics
from coordinator.nodes import NodeRegistry
from coordinator.settings import CoorddSettings
from coordinator.store import JobRecord, Store


async def test_a_restart_takes_generation_and_slots_from_the_job_row_not_the_events(
        tmp_path, store_url):
    """Two in-place re-formations after the workers started (epoch 3, workers of 1); the
    event log holds none of it (a crash before the events, say): the row alone says it."""
    settings = CoorddSettings(state_dir=tmp_path)
    store = await Store.open(store_url)
    spec = JobSpec(name="j", run="true", nodes={"count": 3})
    job = JobRecord(id="j-1", name="j", spec_json=spec.to_json(), state=JobState.RUNNING,
                    generation=3, node_ids=["n0", "n2", "n3"], worker_generation=1,
                    slots={"n0": 0, "n2": 2, "n3": 3}, next_slot=4)
    await store.insert_job(job)
    await store.close()
    store = await Store.open(store_url)
    jobs = JobManager(store, Bus(), settings, Metrics())
    jobs.attach(NodeRegistry(store, settings, {}, jobs.router.on_node_change, Metrics()))
    try:
        view = jobs._runner(await store.get_job(job.id), spec).view
        assert (view.epoch, view.worker_generation, view.next_slot) == (3, 1, 4)
        assert [list(view.ranks_of(n)) for n in view.members] == [[0], [2], [3]]
    finally:
        await store.close()

