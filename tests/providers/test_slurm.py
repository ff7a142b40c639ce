"""The slurm provider against a real Slurm (tests/providers/slurmcluster.py: slurmctld, four
slurmd, munge) with a real coordd and the elastic example job in in-process mode: each coord
node is one Slurm job running coord-agent; lost allocations are replaced while the others
keep training; preemption drains with no lost step; a restarted coordd adopts its
allocations; a bad partition is refused at submit with nothing queued."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import stat
import sys
import textwrap
from pathlib import Path

import pytest

from contract.errors import InvalidSpec
from contract.states import JobState
from tests.integration.harness import ROOT, job_pids, start_coordd, wait_for
from tests.net import free_port
from tests.providers.slurmcluster import SlurmCluster
from tests.providers.sshd import start_sshd
from trainer.elastic import committed_history

pytest.importorskip("torchft")

STEPS = 300
AGENT = Path(sys.executable).parent / "coord-agent"


@pytest.fixture
def slurm(slurm_cluster: SlurmCluster) -> SlurmCluster:
    """The session's cluster, every node back up and idle and the queue empty after a test."""
    yield slurm_cluster
    for pid in slurm_cluster.step_pids():  # what a failed test left running
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    slurm_cluster.cli("scancel", "-u", "root", check=False)
    for node in slurm_cluster.nodes:
        if f"slurmd-{node}" not in slurm_cluster.processes:
            slurm_cluster.start_slurmd(node)
            slurm_cluster.cli("scontrol", "update", f"NodeName={node}", "State=RESUME",
                              check=False)
    wait_for(lambda: slurm_cluster.idle_nodes() == set(slurm_cluster.nodes), 60,
             what="every slurm node idle again")


class SlurmCoordd:
    """coordd configured for the test cluster; `start()` again restarts it on its address.
    `login`: reach Slurm over SSH through this `[slurm.login]` host."""

    def __init__(self, tmp_path: Path, slurm: SlurmCluster, login: dict | None = None):
        self.tmp_path, self.slurm = tmp_path, slurm
        self.workdir = tmp_path / "slurm-work"
        config = tmp_path / "coordd.toml"
        login_table = "[slurm.login]\n" + "".join(
            f"{key} = {json.dumps(value)}\n" for key, value in login.items()) if login else ""
        config.write_text(textwrap.dedent(f"""
            [slurm]
            enabled = true
            workdir = "{self.workdir}"
            agent_command = "{AGENT}"
            poll_interval_s = 1
            join_timeout_s = 60
            [slurm.defaults]
            partition = "low"
        """) + login_table)
        self.env = {**slurm.env, "COORDD_CONFIG": str(config), "COORDD_STOP_GRACE_S": "3",
                    "COORDD_PROVIDER_RETRY_S": "0.5"}
        self.listen = f"127.0.0.1:{free_port()}"
        self.server = None

    def start(self):
        self.server = start_coordd(self.tmp_path / "state", "--heartbeat-timeout", "3",
                                   env=self.env, listen=self.listen)
        return self.server


@pytest.fixture
def coordd(tmp_path, slurm):
    setup = SlurmCoordd(tmp_path, slurm)
    setup.start()
    yield setup
    setup.server.stop()


def job_file(tmp_path: Path, count: int = 3, step_sleep: float = 0.03, minimum: int = 0,
             wait_for_min_s: float = 600, **slurm_keys) -> Path:
    work = tmp_path / "job"
    shutil.copytree(ROOT / "examples" / "elastic", work, dirs_exist_ok=True)
    slurm = "[resources.slurm]\n" + "".join(f"{key} = {json.dumps(value)}\n"
                                            for key, value in slurm_keys.items())
    (work / "job.toml").write_text(textwrap.dedent(f"""
        name = "on-slurm"
        run = "python train.py --steps {STEPS} --ckpt-every 20 --step-sleep {step_sleep}"
        [nodes]
        count = {count}
        min = {minimum or count - 1}
        wait_for_min_s = {wait_for_min_s}
        [fault_tolerance]
        mode = "inprocess"
        [resources]
        provider = "slurm"
    """) + slurm)
    return work / "job.toml"


def events(client, job_id: str, kind: str) -> list[dict]:
    return [e.data | {"message": e.message}
            for e in client.watch(job_id, follow=False) if e.kind == kind]


def reached(server, job_id: str, step: int) -> bool:
    lineage = committed_history(server.state_dir / "checkpoints" / job_id).lineage
    return bool(lineage) and lineage[-1].step >= step


def assert_every_step_committed_once(server, job_id: str) -> None:
    done = committed_history(server.state_dir / "checkpoints" / job_id)
    assert done.ok, (done.gaps, done.repeats)
    assert done.steps == list(range(1, STEPS + 1))
    assert done.lost == [], [r.step for r in done.lost]


def slurm_jobs(server, client, job_id: str) -> dict[str, str]:
    """coord node id -> its Slurm job id, for the job's current nodes."""
    return {e["node"]: e["slurm_job"] for e in events(client, job_id, "slurm.submitted")}


def worker_pids(job_id: str) -> dict[str, set[int]]:
    """node id -> the job's worker pids there (they work in WORKDIR/NODE_ID/work/jobs/JOB)."""
    found: dict[str, set[int]] = {}
    for pid in job_pids(job_id):
        with contextlib.suppress(OSError):
            found.setdefault(Path(os.readlink(f"/proc/{pid}/cwd")).parts[-4], set()).add(pid)
    return found


def running(client, job_id: str, slurm: SlurmCluster) -> dict[str, str]:
    """node id -> Slurm node name, for the job's members whose allocation runs."""
    members = set(client.get(job_id).node_ids)
    by_name = {j["name"].removeprefix("coord-"): j["node"]
               for j in slurm.jobs().values() if j["state"] == "RUNNING"}
    return {n: by_name[n] for n in members if n in by_name}


@pytest.mark.timeout(180)
def test_three_slurm_nodes_finish_with_every_step_committed_once(coordd, slurm):
    server = coordd.server
    with server.client() as client:
        job = client.submit(job_file(coordd.tmp_path))
        wait_for(lambda: len(running(client, job.id, slurm)) == 3 and
                 client.get(job.id).state == JobState.RUNNING, 90, what="3 slurm nodes")
        placed = running(client, job.id, slurm)
        assert len(set(placed.values())) == 3  # one Slurm node each (--exclusive)
        token = (server.state_dir / "agent-token").read_text().strip()
        for job_id in slurm_jobs(server, client, job.id).values():
            shown = slurm.cli("scontrol", "show", "job", "-dd", job_id).stdout
            assert token not in shown and "COORD_TOKEN" not in shown
        assert token not in slurm.cli("squeue", "-h", "-t", "all", "-o", "%all").stdout
        secrets = coordd.workdir / "agent.env"
        assert stat.S_IMODE(secrets.stat().st_mode) == 0o600
        assert stat.S_IMODE(coordd.workdir.stat().st_mode) == 0o700
        listed = server.cli("nodes", "--job", job.id, "-o", "json", "--fields", "id,machine")
        machines = {n["id"]: n["machine"] for n in json.loads(listed.stdout)}
        submitted = slurm_jobs(server, client, job.id)
        assert machines == {node: f"slurm job {submitted[node]} on {where}"
                            for node, where in placed.items()}, machines
        table = server.cli("nodes", "--job", job.id).stdout
        assert all(f"slurm job {submitted[node]}" in table for node in placed), table
        final = client.wait(job.id, timeout=150)
        assert final.state == JobState.SUCCEEDED, final.reason
        assert_every_step_committed_once(server, job.id)
    wait_for(lambda: not slurm.live_jobs(), 30, what="every allocation released")


def tag_of(state_dir: Path) -> str:
    return "coordd=" + hashlib.sha256(str(state_dir.resolve()).encode()).hexdigest()[:12]


def reformed_with_joiner(client, job_id: str, count: int) -> list[dict]:
    return wait_for(lambda: (added := [e for e in events(client, job_id, "generation.reformed")
                                       if e["added"]]) and len(added) >= count and added,
                    120, what=f"{count} replacement(s) to join")


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_scancel_and_a_dead_slurmd_replace_nodes_while_the_others_train(coordd, slurm):
    server = coordd.server
    with server.client() as client:
        job = client.submit(job_file(coordd.tmp_path, step_sleep=0.08))
        wait_for(lambda: len(running(client, job.id, slurm)) == 3 and
                 reached(server, job.id, 20), 120, what="3 slurm nodes at step 20")
        first = running(client, job.id, slurm)
        cancelled, killed, survivor = list(first)
        before = worker_pids(job.id)
        # an allocation ends (scancel): its agent is told (SIGTERM) and leaves
        slurm.cli("scancel", slurm_jobs(server, client, job.id)[cancelled])
        reformed_with_joiner(client, job.id, 1)
        # a machine dies: its slurmd and everything on it; Slurm marks the node DOWN
        slurm.kill_node(first[killed])
        reformed_with_joiner(client, job.id, 2)
        assert worker_pids(job.id).get(survivor) == before[survivor], \
            "the survivor's workers were restarted"
        wait_for(lambda: slurm.node_states().get(first[killed], "").startswith("down"), 60,
                 what="Slurm to mark the dead node DOWN")
        final = client.wait(job.id, timeout=200)
        assert final.state == JobState.SUCCEEDED, final.reason
        assert final.restarts == 0
        assert_every_step_committed_once(server, job.id)
        lost = {e["node"] for e in events(client, job.id, "slurm.submitted")} - set(first)
        assert len(lost) >= 2  # two replacement allocations were submitted


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_high_priority_job_preempts_a_node_without_losing_a_step(coordd, slurm):
    server = coordd.server
    with server.client() as client:
        job = client.submit(job_file(coordd.tmp_path, step_sleep=0.08))
        wait_for(lambda: len(running(client, job.id, slurm)) == 3 and
                 reached(server, job.id, 20), 120, what="3 slurm nodes at step 20")
        first = running(client, job.id, slurm)
        victim, where = next(iter(first.items()))
        slurm.cli("sbatch", "-p", "high", "-w", where, "-o", "/dev/null", "--wrap", "sleep 20")
        reformed_with_joiner(client, job.id, 1)
        leaving = events(client, job.id, "node.leaving")
        assert any(victim in str(e) for e in leaving), leaving
        final = client.wait(job.id, timeout=200)
        assert final.state == JobState.SUCCEEDED, final.reason
        assert_every_step_committed_once(server, job.id)
        reformed = events(client, job.id, "generation.reformed")
        assert any(e["cause"] == "node_leaving" for e in reformed), reformed


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_restarted_coordd_adopts_its_allocations_and_cancels_orphans(coordd, slurm):
    server = coordd.server
    with server.client() as client:
        job = client.submit(job_file(coordd.tmp_path, step_sleep=0.08))
        wait_for(lambda: len(running(client, job.id, slurm)) == 3 and
                 reached(server, job.id, 20), 120, what="3 slurm nodes at step 20")
        ours = {n: j for n, j in slurm_jobs(server, client, job.id).items()}
    server.process.send_signal(signal.SIGKILL)
    server.process.wait()
    orphan = slurm.cli("sbatch", "--parsable", "-p", "low", "--job-name=coord-node-orphan-1",
                       f"--comment={tag_of(server.state_dir)}", "-o", "/dev/null",
                       "--wrap", "sleep 300").stdout.strip()
    server = coordd.start()
    with server.client() as client:
        wait_for(lambda: orphan not in slurm.live_jobs(), 30, what="the orphan cancelled")
        final = client.wait(job.id, timeout=200)
        assert final.state == JobState.SUCCEEDED, final.reason
        assert_every_step_committed_once(server, job.id)
        assert set(slurm_jobs(server, client, job.id)) == set(ours), "a node was replaced"


@pytest.mark.timeout(120)
def test_a_bad_partition_is_refused_at_submit_and_cancel_releases_allocations(coordd, slurm):
    server = coordd.server
    with server.client() as client:
        with pytest.raises(InvalidSpec) as refused:
            client.submit(job_file(coordd.tmp_path, partition="nope"))
        message = str(refused.value)
        assert "resources.slurm.partition = 'nope'" in message, message
        assert "invalid partition" in message.lower(), message
        with pytest.raises(InvalidSpec) as refused:
            client.submit(job_file(coordd.tmp_path, partition="high", gres="gpu:1"))
        message = str(refused.value)
        assert "gres = 'gpu:1'" in message and "gres by partition: high (null)" in message, \
            message
        assert not slurm.live_jobs(), "something was queued"
        job = client.submit(job_file(coordd.tmp_path, count=2, step_sleep=1))
        wait_for(lambda: len(running(client, job.id, slurm)) == 2, 60, what="2 slurm nodes")
        result = server.cli("cancel", job.id)
        assert result.returncode == 0, result.stderr
        wait_for(lambda: not slurm.live_jobs(), 60, what="every allocation released")


@pytest.mark.timeout(120)
def test_an_agent_that_cannot_start_is_lost_through_slurm_with_its_log(tmp_path, slurm):
    setup = SlurmCoordd(tmp_path, slurm)
    config = Path(setup.env["COORDD_CONFIG"])
    config.write_text(config.read_text().replace(str(AGENT), "/nonexistent/coord-agent"))
    server = setup.start()
    try:
        with server.client() as client:
            job = client.submit(job_file(tmp_path, count=2))
            lost = wait_for(lambda: events(client, job.id, "slurm.node_lost"), 60,
                            what="a node lost through Slurm")
            assert "ended (FAILED" in lost[0]["message"], lost[0]
            assert "/nonexistent/coord-agent" in lost[0]["message"], lost[0]
            client.cancel(job.id)
        wait_for(lambda: not slurm.live_jobs(), 60, what="every allocation released")
    finally:
        server.stop()


@pytest.mark.slow
@pytest.mark.timeout(150)
def test_slurm_through_a_login_node_over_ssh(tmp_path, slurm):
    """coordd's host has no Slurm client set up: sbatch, squeue and scancel run on the login
    node (a real sshd on loopback whose sessions see the cluster's slurm.conf)."""
    sshd = start_sshd(tmp_path / "sshd", f"SetEnv SLURM_CONF={slurm.conf}\n")
    login = {"name": "login", "address": "127.0.0.1", "port": sshd.port, "user": sshd.user,
             "key_file": str(sshd.key), "known_hosts": str(sshd.known_hosts)}
    setup = SlurmCoordd(tmp_path, slurm, login)
    setup.env.pop("SLURM_CONF")
    server = setup.start()
    try:
        with server.client() as client:
            with pytest.raises(InvalidSpec, match="partition = 'nope'"):
                client.submit(job_file(tmp_path, partition="nope"))
            job = client.submit(job_file(tmp_path, count=2))
            final = client.wait(job.id, timeout=120)
            assert final.state == JobState.SUCCEEDED, final.reason
            assert_every_step_committed_once(server, job.id)
        wait_for(lambda: not slurm.live_jobs(), 60, what="every allocation released")
    finally:
        server.stop()
        sshd.stop()


@pytest.mark.slow
@pytest.mark.timeout(360)
def test_an_allocation_near_its_time_limit_drains_its_node_without_losing_a_step(coordd, slurm):
    """`--signal=B:TERM@120`: SIGTERM reaches the agent alone (the batch shell it replaced)
    once less than 120 s are left; the agent leaves, a replacement joins."""
    server = coordd.server
    with server.client() as client:
        # long enough for the replacement to join: Slurm checks signals every ~30 s
        job = client.submit(job_file(coordd.tmp_path, step_sleep=0.15))
        wait_for(lambda: len(running(client, job.id, slurm)) == 3 and
                 reached(server, job.id, 20), 120, what="3 slurm nodes at step 20")
        first = running(client, job.id, slurm)
        victim = next(iter(first))
        before = worker_pids(job.id)
        slurm.cli("scontrol", "update", f"JobId={slurm_jobs(server, client, job.id)[victim]}",
                  "TimeLimit=2")
        reformed_with_joiner(client, job.id, 1)
        leaving = events(client, job.id, "node.leaving")
        assert any(victim in str(e) for e in leaving), leaving
        others = [n for n in first if n != victim]
        assert all(worker_pids(job.id).get(n) == before[n] for n in others), \
            "a survivor's workers were restarted"
        final = client.wait(job.id, timeout=280)
        assert final.state == JobState.SUCCEEDED, final.reason
        assert_every_step_committed_once(server, job.id)


@pytest.mark.timeout(120)
def test_a_queue_that_gives_no_allocation_fails_the_job_after_wait_for_min_s(coordd, slurm):
    server = coordd.server
    with server.client() as client:
        job = client.submit(job_file(coordd.tmp_path, count=5, minimum=5, wait_for_min_s=8))
        queued = wait_for(lambda: events(client, job.id, "slurm.queued"), 30,
                          what="the fifth allocation to wait in the queue")
        assert queued[0]["reason"] in ("Resources", "Priority"), queued
        final = client.wait(job.id, timeout=60)
        assert final.state == JobState.FAILED and "wait_for_min_s" in final.reason, final.reason
    wait_for(lambda: not slurm.live_jobs(), 60, what="every allocation released")
