"""Two coordd on one PostgreSQL: one leads, the other answers with its address and takes
over when it is killed; workers never notice; a leader frozen past its lease changes nothing
when it wakes."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import textwrap
import time

import pytest

from contract.states import JobState, NodeState
from coordinator.localcluster import BIN
from coordinator.server import LOST_LEASE
from tests import netns
from tests.coordd_set import (leader, lighthouses, set_client, start_across, start_set,
                              stop_set, wait_for_leader)
from tests.integration.harness import ROOT, elastic_job, job_pids, wait_for
from trainer.elastic import committed_history


def set_env(members, first) -> dict[str, str]:
    """A client that knows every member, `first` tried first."""
    addresses = [first.address] + [m.address for m in members if m is not first]
    return {**first.env, "COORD_ADDR": ",".join(addresses)}


@pytest.mark.timeout(120)
def test_the_standby_names_the_leader_and_leads_within_5_s_of_its_kill(tmp_path, pg_url,
                                                                      postgres):
    active, standby = members = start_set(tmp_path, postgres, pg_url)
    try:
        assert leader(postgres, pg_url) == (1, active.address)
        env = set_env(members, standby)  # the standby first: the client must follow
        listed = subprocess.run([str(BIN / "coord"), "jobs"], env=env, capture_output=True,
                                text=True, timeout=60)
        assert listed.returncode == 0, listed.stderr
        status = subprocess.run([str(BIN / "coordd"), "status"],
                                env={**standby.env, "COORDD_DATABASE_URL": pg_url},
                                capture_output=True, text=True, timeout=60)
        assert f"at {active.address}, epoch 1" in status.stdout
        assert "leader" in status.stdout and "standby" in status.stdout
        killed_at = time.monotonic()
        active.process.kill()
        # A client that knows only the standby, sent to the dead leader while its lease
        # runs, comes back and is answered once the standby leads.
        alone = subprocess.run([str(BIN / "coord"), "jobs"], capture_output=True, text=True,
                               env={**standby.env, "COORD_ADDR": standby.address}, timeout=60)
        assert alone.returncode == 0, alone.stderr
        assert wait_for_leader(postgres, pg_url, 2) == standby.address
        assert time.monotonic() - killed_at < 5
        listed = subprocess.run([str(BIN / "coord"), "jobs"], env=set_env(members, active),
                                capture_output=True, text=True, timeout=60)
        assert listed.returncode == 0, listed.stderr
    finally:
        stop_set(members)


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_training_survives_a_leader_kill_without_restarting_workers(tmp_path, pg_url,
                                                                    postgres):
    active, standby = members = start_set(tmp_path, postgres, pg_url)
    work = tmp_path / "job"
    shutil.copytree(ROOT / "examples" / "elastic", work)
    (work / "job.toml").write_text(textwrap.dedent("""
        name = "survivor"
        run = "python train.py --steps 300 --ckpt-every 25 --step-sleep 0.04"
        [nodes]
        count = 2
        [fault_tolerance]
        mode = "restart"
    """))
    try:
        with active.client() as client:
            job = client.submit(work / "job.toml")
        ckpt = active.state_dir / "checkpoints" / job.id
        wait_for(lambda: (h := committed_history(ckpt).lineage) and h[-1].step >= 30, 90,
                 what="step 30")
        workers = sorted(job_pids(job.id))
        active.process.kill()
        active.process.wait()
        wait_for_leader(postgres, pg_url, 2)
        with set_client(members, standby) as client:
            wait_for(lambda: all(n.state == NodeState.ASSIGNED for n in client.nodes(job.id)),
                     30, what="the agents to follow the new leader")
            assert sorted(job_pids(job.id)) == workers  # the same processes, still training
            final = client.wait(job.id, timeout=150)
        assert final.state == JobState.SUCCEEDED, final.reason
        assert final.generation == 1  # never re-formed: no worker was restarted
        history = committed_history(ckpt)
        assert history.ok and history.steps == list(range(1, 301)) and not history.lost
    finally:
        stop_set(members)


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_a_leader_frozen_past_its_lease_steps_down_and_changes_nothing(tmp_path, pg_url,
                                                                       postgres):
    active, standby = members = start_set(tmp_path, postgres, pg_url)
    database = pg_url.rpartition("/")[2]
    (tmp_path / "job.toml").write_text('name = "sleeper"\nrun = "sleep 600"\n[nodes]\ncount = 2\n')
    try:
        with active.client() as client:
            job = client.submit(tmp_path / "job.toml")
            wait_for(lambda: len(job_pids(job.id)) >= 2, 60, what="the workers to start")
        workers = sorted(job_pids(job.id))
        active.process.send_signal(signal.SIGSTOP)
        wait_for_leader(postgres, pg_url, 2)
        with set_client(members, standby) as client:
            wait_for(lambda: all(n.state == NodeState.ASSIGNED for n in client.nodes(job.id)),
                     60, what="the agents to follow the new leader")
        written = postgres.psql("SELECT count(*), max(seq) FROM events WHERE epoch = 1", database)
        active.process.send_signal(signal.SIGCONT)
        assert active.process.wait(30) == LOST_LEASE
        assert postgres.psql("SELECT count(*), max(seq) FROM events WHERE epoch = 1",
                             database) == written
        assert leader(postgres, pg_url) == (2, standby.address)
        assert sorted(job_pids(job.id)) == workers
        with set_client(members, standby) as client:
            assert client.get(job.id).state == JobState.RUNNING
            client.cancel(job.id)
    finally:
        with contextlib.suppress(ProcessLookupError):
            active.process.send_signal(signal.SIGCONT)
        stop_set(members)


@pytest.fixture
def other_host():
    """A network namespace with its own links to this one (tests/netns.py)."""
    if why := netns.available():
        pytest.skip(why)
    host = netns.make_host()
    yield host
    host.remove()


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_a_leader_cut_from_the_database_stops_within_its_lease(tmp_path, other_host):
    """The leader on another host loses its database link but not its agents: it exits
    within its lease, no write of its epoch lands afterwards, the standby leads, and the
    workers it started go on under the standby."""
    lease_s = 2.0
    postgres, url, members = start_across(tmp_path, other_host, lease_s)
    active, standby = members
    database = url.rpartition("/")[2]
    try:
        (tmp_path / "job.toml").write_text('name = "sleeper"\nrun = "sleep 600"\n'
                                           '[nodes]\ncount = 2\n')
        with active.client() as client:
            job = client.submit(tmp_path / "job.toml")
            wait_for(lambda: len(job_pids(job.id)) >= 2, 60, what="the workers to start")
        workers = sorted(job_pids(job.id))
        cut_at, cut_wall = time.monotonic(), time.time()
        other_host.cut_database()
        assert active.process.wait(lease_s + 5) == LOST_LEASE
        assert time.monotonic() - cut_at <= lease_s
        wait_for_leader(postgres, url, 2)
        assert postgres.psql(f"SELECT count(*) FROM events WHERE epoch = 1 AND time > {cut_wall}",
                             database) == "0"
        with set_client(members, standby) as client:
            wait_for(lambda: all(n.state == NodeState.ASSIGNED for n in client.nodes(job.id)),
                     60, what="the agents to follow the new leader")
            assert sorted(job_pids(job.id)) == workers
            assert client.get(job.id).state == JobState.RUNNING
            client.cancel(job.id)
    finally:
        stop_set(members)
        postgres.stop()


INPROCESS_JOB = """
    name = "inproc"
    run = "python train.py --steps 300 --ckpt-every 20 --step-sleep 0.03"
    [nodes]
    count = 2
    [fault_tolerance]
    mode = "inprocess"
"""


def submit_inprocess(tmp_path, member):
    work = tmp_path / "job"
    with member.client() as client:
        job = client.submit(elastic_job(work, INPROCESS_JOB))
    ckpt = member.state_dir / "checkpoints" / job.id
    wait_for(lambda: (h := committed_history(ckpt).lineage) and h[-1].step >= 40, 90,
             what="step 40")
    return job, ckpt


def finishes_untouched(members, standby, job, ckpt, workers) -> None:
    """The agents follow the new leader and the job ends well with the workers it began with,
    every step committed once."""
    with set_client(members, standby) as client:
        wait_for(lambda: all(n.state == NodeState.ASSIGNED for n in client.nodes(job.id)),
                 30, what="the agents to follow the new leader")
        assert sorted(job_pids(job.id)) == workers
        final = client.wait(job.id, timeout=150)
    assert final.state == JobState.SUCCEEDED, final.reason
    assert final.generation == 1
    history = committed_history(ckpt)
    assert history.ok and history.steps == list(range(1, 301)) and not history.lost


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_inprocess_training_survives_a_leader_kill_and_its_lighthouse_goes(tmp_path, pg_url,
                                                                          postgres):
    """The killed leader's Lighthouse ends within its lease (nothing of it is left running);
    the replicas move to the new leader's and train on."""
    pytest.importorskip("torchft")
    lease_s = 2.0
    active, standby = members = start_set(tmp_path, postgres, pg_url, lease_s)
    try:
        job, ckpt = submit_inprocess(tmp_path, active)
        workers = sorted(job_pids(job.id))
        assert set(lighthouses(active)) == {job.id}
        killed_at = time.monotonic()
        active.process.kill()
        active.process.wait()
        wait_for(lambda: not lighthouses(active), lease_s + 2, what="the old Lighthouse to end")
        assert time.monotonic() - killed_at <= lease_s
        wait_for_leader(postgres, pg_url, 2)
        finishes_untouched(members, standby, job, ckpt, workers)
    finally:
        stop_set(members)


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_inprocess_training_follows_the_leader_to_another_host(tmp_path, other_host):
    """The leader's side of its host is lost (coordd and its Lighthouse SIGKILLed; the nodes
    live elsewhere): the standby here starts the job's Lighthouse on this host and the
    replicas, told by their agents, train on through it."""
    pytest.importorskip("torchft")
    postgres, url, members = start_across(tmp_path, other_host)
    active, standby = members
    try:
        job, ckpt = submit_inprocess(tmp_path, active)
        workers = sorted(job_pids(job.id))
        old = lighthouses(active)
        active.process.kill()
        for pid in old.values():
            os.kill(pid, signal.SIGKILL)
        wait_for_leader(postgres, url, 2)
        finishes_untouched(members, standby, job, ckpt, workers)
        assert not lighthouses(active)
    finally:
        stop_set(members)
        postgres.stop()
