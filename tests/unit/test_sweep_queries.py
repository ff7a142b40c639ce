"""coordd's answers about the jobs a node holds folders of: one store query for them all,
and the local nodes' share of the cores coordd may use."""

from __future__ import annotations

import os

import pytest
from sqlalchemy import event

from contract.states import JobState
from coordinator.bus import Bus
from coordinator.jobs import JobManager
from coordinator.metrics import Metrics
from coordinator.providers.local import LocalProvider
from coordinator.settings import CoorddSettings
from coordinator.store import JobRecord, Store


async def test_ended_asks_the_store_once_for_every_job(tmp_path, store_url):
    store = await Store.open(store_url)
    try:
        for i, state in enumerate([JobState.SUCCEEDED, JobState.RUNNING, JobState.FAILED]):
            await store.insert_job(JobRecord(id=f"j-{i}", name="j", spec_json="{}",
                                             state=state))
        jobs = JobManager(store, Bus(), CoorddSettings(state_dir=tmp_path), Metrics())
        statements = []
        event.listen(store.engine.sync_engine, "before_cursor_execute",
                     lambda *args: statements.append(args[2]))
        asked = ["j-0", "j-1", "j-2", "unknown-0123abcd"] * 50
        assert await jobs.ended(asked) == ["j-0", "j-2", "unknown-0123abcd"]
        assert len(statements) == 1
    finally:
        await store.close()


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two cores to leave one")
def test_local_nodes_share_the_cores_coordd_may_run_on(tmp_path):
    provider = LocalProvider(tmp_path, None, 0)
    allowed = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(allowed)})  # this thread only, as a cgroup or taskset would
    try:
        assert provider._cpu_share(1, 1) == 1
    finally:
        os.sched_setaffinity(0, allowed)
