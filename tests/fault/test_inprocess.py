"""In-process recovery (`[fault_tolerance] mode = "inprocess"`) with real coordd, agents, torchft
replicas and SIGKILL: survivors keep their processes, no committed step is lost, a replacement
heals from a live peer, and the quorum service itself can die."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import textwrap
from pathlib import Path

import pytest

from contract.states import JobState
from tests.integration.harness import ROOT, job_pids, start_coordd, wait_for
from trainer.elastic import committed_history

pytest.importorskip("torchft")

STEPS = 300


@pytest.fixture
def coordd(request, tmp_path):
    """On SQLite, or on PostgreSQL (a leader alone) where a test asks with indirect=True."""
    env = {"COORDD_STOP_GRACE_S": "3"}
    if getattr(request, "param", "sqlite") == "postgresql":
        env["COORDD_DATABASE_URL"] = request.getfixturevalue("pg_url")
    server = start_coordd(tmp_path / "state", "--heartbeat-timeout", "3", env=env)
    yield server
    server.stop()


def submit(client, tmp_path: Path, step_sleep: float = 0.03, mode: str | None = "inprocess",
           count: int = 3, spares: int = 0, max_restarts: int = 0):
    """The example job on `count` nodes; `mode=None` leaves [fault_tolerance] at its default."""
    work = tmp_path / "job"
    shutil.copytree(ROOT / "examples" / "elastic", work)
    fault = f'[fault_tolerance]\nmode = "{mode}"' if mode else ""
    (work / "job.toml").write_text(textwrap.dedent(f"""
        name = "inproc"
        run = "python train.py --steps {STEPS} --ckpt-every 20 --step-sleep {step_sleep}"
        max_restarts = {max_restarts}
        [nodes]
        count = {count}
        min = {count - 1}
        spares = {spares}
    """) + fault + "\n")
    return client.submit(work / "job.toml")


def history(coordd, job_id: str):
    root = coordd.state_dir / "checkpoints" if hasattr(coordd, "state_dir") else coordd
    return committed_history(root / job_id)


def reached(coordd, job_id: str, step: int) -> bool:
    lineage = history(coordd, job_id).lineage
    return bool(lineage) and lineage[-1].step >= step


def worker_pids(job_id: str) -> dict[str, set[int]]:
    """node id -> pids of the job's worker processes running there (a local node's workers
    work in NODE_DIR/jobs/JOB_ID, NODE_DIR being state/nodes/NODE_ID)."""
    by_node: dict[str, set[int]] = {}
    for pid in job_pids(job_id):
        with contextlib.suppress(OSError):
            node_id = Path(os.readlink(f"/proc/{pid}/cwd")).parts[-3]
            by_node.setdefault(node_id, set()).add(pid)
    return by_node


def workers_of(job_id: str, nodes: list[str], timeout: float = 30) -> dict[str, set[int]]:
    """`worker_pids` once every one of `nodes` runs a worker: a worker is found by its
    environment, which a process just started may not show yet."""
    return wait_for(lambda: (found := worker_pids(job_id)) and all(n in found for n in nodes)
                    and found, timeout, what=f"workers on {nodes}")


def events(client, job_id: str, kind: str) -> list[dict]:
    return [e.data | {"message": e.message}
            for e in client.watch(job_id, follow=False) if e.kind == kind]


def assert_no_committed_step_lost(coordd, job_id: str) -> None:
    done = history(coordd, job_id)
    assert done.ok, (done.gaps, done.repeats)
    assert done.steps == list(range(1, STEPS + 1))
    assert done.lost == [], [r.step for r in done.lost]
    assert done.lineage[-1].loss < done.lineage[0].loss


def log_text(client, job_id: str) -> str:
    return "\n".join(line.text for line in client.logs(job_id))


@pytest.mark.timeout(180)
def test_sigkill_one_of_three_survivors_keep_running_and_a_replacement_heals(
        coordd, client, tmp_path):
    """With the default mode ("auto"): the script joins the quorum, so coordd re-forms in place."""
    record = submit(client, tmp_path, mode=None)
    wait_for(lambda: events(client, record.id, "inprocess.confirmed"), 90,
             what="every worker to join the quorum")
    wait_for(lambda: reached(coordd, record.id, 40), 90, what="step 40")
    first = list(client.get(record.id).node_ids)
    victim, survivors = first[1], [first[0], first[2]]
    before = workers_of(record.id, first)
    coordd.kill_node(victim, signal.SIGKILL)
    joined = wait_for(lambda: [e for e in events(client, record.id, "generation.reformed")
                               if e["added"]], 90, what="a replacement to join")
    assert all(worker_pids(record.id).get(n) == before[n] for n in survivors), \
        "a survivor's workers were restarted"
    final = client.wait(record.id, timeout=120)
    assert final.state == JobState.SUCCEEDED, final.reason
    assert final.restarts == 0
    # The pair trained on while the replacement booted (the leader prints every 10 steps):
    # a survivor must not wait in a collective on the other until a newcomer makes a quorum.
    assert "world=2 " in log_text(client, record.id)
    [lost] = [e for e in events(client, record.id, "generation.reformed")
              if e["cause"] == "node_lost"]
    assert victim in lost["old_members"] and victim not in lost["new_members"]
    assert [e["cause"] for e in events(client, record.id, "generation.started")] == ["start"]
    # `coord status` and the SDK show the in-place re-formations beside the start.
    assert {(r.kind, r.cause) for r in client.reformations(record.id)} >= {
        ("restart", "start"), ("in_place", "node_lost"), ("in_place", "node_joined")}
    status = coordd.cli("status", record.id).stdout
    assert "in_place node_lost" in " ".join(status.split()), status
    assert_no_committed_step_lost(coordd, record.id)
    newcomer = joined[0]["added"][0]
    assert newcomer in final.node_ids
    healed = [l.text for l in client.logs(record.id, node=newcomer) if "DONE" in l.text]
    assert healed and "healed_from_peer=True" in healed[0], healed


@pytest.mark.timeout(180)
def test_a_spare_takes_a_lost_nodes_place_warm_and_a_new_spare_is_asked_for(
        coordd, client, tmp_path):
    """`[nodes] spares = 1`: the idle node (its interpreter already warm) joins the survivor at
    once, heals from it, and coordd asks for a spare to replace the one it used."""
    record = submit(client, tmp_path, count=2, spares=1)
    wait_for(lambda: len(client.nodes(job=record.id)) == 3 and reached(coordd, record.id, 40),
             90, what="two nodes training, a spare idle, step 40")
    members = list(client.get(record.id).node_ids)
    [spare] = {n.id for n in client.nodes(job=record.id)} - set(members)
    victim, survivor = members
    before = workers_of(record.id, members)[survivor]
    asked = len(events(client, record.id, "nodes.requested"))
    coordd.kill_node(victim, signal.SIGKILL)
    joined = wait_for(lambda: [e for e in events(client, record.id, "generation.reformed")
                               if e["added"]], 60, what="the spare to join")
    assert joined[0]["added"] == [spare]
    wait_for(lambda: len(events(client, record.id, "nodes.requested")) > asked, 30,
             what="a new spare to be asked for")
    assert worker_pids(record.id).get(survivor) == before, "the survivor was restarted"
    final = client.wait(record.id, timeout=120)
    assert final.state == JobState.SUCCEEDED, final.reason
    assert final.restarts == 0
    assert_no_committed_step_lost(coordd, record.id)
    started = [json.loads(line) for line in
               (coordd.state_dir / "nodes" / spare / "agent.log").read_text().splitlines()
               if '"worker.started"' in line]
    assert [s["warm"] for s in started] == [True]  # no interpreter start on the critical path
    healed = [l.text for l in client.logs(record.id, node=spare) if "DONE" in l.text]
    assert healed and "healed_from_peer=True" in healed[0], healed


@pytest.mark.timeout(180)
def test_a_killed_worker_restarts_in_place_warm_and_heals_while_the_others_train(tmp_path):
    """Only the worker process dies (OOM, segfault); its node stays. Like torchft restarting
    a replica, coordd starts it again on the same node, from the warm interpreter its agent
    started beside it, and it heals from a live peer: nobody else restarts, no replacement
    node is asked for, one restart is charged."""
    server = start_coordd(tmp_path / "state", env={"COORD_AGENT_WARM_START": "1"})
    try:
        with server.client() as client:
            record = submit(client, tmp_path, max_restarts=1)
            wait_for(lambda: reached(server, record.id, 40), 90, what="step 40")
            members = list(client.get(record.id).node_ids)
            victim = members[1]
            before = workers_of(record.id, members)
            agents = {n: server.node_pid(n) for n in members}
            asked = len(events(client, record.id, "nodes.requested"))
            [worker] = before[victim]
            os.kill(worker, signal.SIGKILL)
            [restart] = wait_for(lambda: events(client, record.id, "generation.reformed"), 30,
                                 what="the worker to be restarted in place")
            assert restart["cause"] == "worker_failed" and restart["added"] == [victim]
            assert restart["new_members"] == members
            assert all(worker_pids(record.id).get(n) == before[n] for n in members
                       if n != victim), "a survivor's worker was restarted"
            final = client.wait(record.id, timeout=120)
            assert final.state == JobState.SUCCEEDED, final.reason
            assert final.restarts == 1 and list(final.node_ids) == members
            finished = events(client, record.id, "training.finished")
            assert sorted(e["node"] for e in finished) == sorted(members)  # each, once
            assert {n: server.node_pid(n) for n in members} == agents  # no node replaced
            assert len(events(client, record.id, "nodes.requested")) == asked
            assert_no_committed_step_lost(server, record.id)
            done = [l.text for l in client.logs(record.id, node=victim) if "DONE" in l.text]
            assert len(done) == 1 and "healed_from_peer=True" in done[0], done
            starts = [json.loads(line) for line in
                      (server.state_dir / "nodes" / victim / "agent.log").read_text().splitlines()
                      if '"worker.started"' in line]
            assert len(starts) == 2 and starts[1]["warm"], starts  # the second: in place, warm
    finally:
        server.stop()


@pytest.mark.timeout(180)
@pytest.mark.parametrize("coordd", ["sqlite", "postgresql"], indirect=True)
def test_killing_the_quorum_service_loses_no_committed_step(coordd, client, tmp_path):
    """On PostgreSQL the Lighthouse lives by the leader's lease, which keeps it alive."""
    record = submit(client, tmp_path)
    started = wait_for(lambda: events(client, record.id, "quorum.started"), 60,
                       what="the quorum service")
    wait_for(lambda: reached(coordd, record.id, 40), 90, what="step 40")
    port = started[0]["address"].rpartition(":")[2]
    [lighthouse] = [pid for pid in _pids_with_arg(f"127.0.0.1:{port}")]
    before = workers_of(record.id, list(client.get(record.id).node_ids))
    os.kill(lighthouse, signal.SIGKILL)
    step_at_kill = history(coordd, record.id).lineage[-1].step
    wait_for(lambda: reached(coordd, record.id, step_at_kill + 5), 10,
             what="training to resume within seconds")
    assert events(client, record.id, "quorum.died")
    assert worker_pids(record.id) == before  # nobody restarted
    final = client.wait(record.id, timeout=120)
    assert final.state == JobState.SUCCEEDED, final.reason
    assert_no_committed_step_lost(coordd, record.id)
    assert len(events(client, record.id, "quorum.died")) == 1  # the kill's: no other ended it


@pytest.mark.timeout(180)
def test_a_spot_notice_leaves_at_a_step_boundary_discarding_nothing(coordd, client, tmp_path):
    record = submit(client, tmp_path)
    wait_for(lambda: reached(coordd, record.id, 40), 90, what="step 40")
    members = list(client.get(record.id).node_ids)
    doomed = members[0]  # quorum rank 0: the writer of the step log
    others = {n: p for n, p in workers_of(record.id, members).items() if n != doomed}
    result = coordd.cli("debug", "interrupt", doomed)
    assert result.returncode == 0, result.stderr
    left = wait_for(lambda: [e for e in events(client, record.id, "generation.reformed")
                             if e["cause"] == "node_leaving"], 60, what="the node to leave")
    assert doomed not in left[0]["new_members"]
    assert all(worker_pids(record.id).get(n) == pids for n, pids in others.items())
    final = client.wait(record.id, timeout=120)
    assert final.state == JobState.SUCCEEDED, final.reason
    assert doomed not in final.node_ids
    assert_no_committed_step_lost(coordd, record.id)
    done = [line for line in log_text(client, record.id).splitlines()
            if line.startswith(("LEFT", "DONE"))]
    assert any(line.startswith("LEFT") for line in done), done
    assert all("discarded=0" in line for line in done), done  # nothing thrown away anywhere


def _pids_with_arg(needle: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if needle.encode() in (entry / "cmdline").read_bytes().split(b"\0"):
                    found.append(int(entry.name))
    return found


@pytest.mark.timeout(180)
def test_two_of_three_lost_the_survivor_waits_and_the_replacements_heal_from_it(
        coordd, client, tmp_path):
    """Machine-loss test (b) in place: below `nodes.min` the last replica keeps its process
    and its state, waits for replacements, and they take the state from it."""
    record = submit(client, tmp_path)
    wait_for(lambda: reached(coordd, record.id, 40), 90, what="step 40")
    first = list(client.get(record.id).node_ids)
    survivor = first[2]
    before = workers_of(record.id, first)[survivor]
    for victim in first[:2]:
        coordd.kill_node(victim, signal.SIGKILL)
    wait_for(lambda: len([e for e in events(client, record.id, "generation.reformed")
                          if e["added"]]) >= 1 and reached(coordd, record.id, 60), 120,
             what="replacements to join and training to go on")
    assert worker_pids(record.id).get(survivor) == before, "the survivor was restarted"
    final = client.wait(record.id, timeout=150)
    assert final.state == JobState.SUCCEEDED, final.reason
    assert final.restarts == 0
    assert [e["cause"] for e in events(client, record.id, "generation.started")] == ["start"]
    assert_no_committed_step_lost(coordd, record.id)
    newcomers = set(final.node_ids) - set(first)
    assert newcomers
    done = [l.text for n in newcomers for l in client.logs(record.id, node=n) if "DONE" in l.text]
    assert done and all("healed_from_peer=True" in line for line in done), done


@pytest.mark.timeout(180)
def test_a_node_killed_while_a_replacement_heals_still_succeeds(coordd, client, tmp_path):
    record = submit(client, tmp_path)
    wait_for(lambda: reached(coordd, record.id, 40), 90, what="step 40")
    first = list(client.get(record.id).node_ids)
    coordd.kill_node(first[2], signal.SIGKILL)
    joined = wait_for(lambda: [e for e in events(client, record.id, "generation.reformed")
                               if e["added"]], 90, what="a replacement to be started")
    newcomer = joined[0]["added"][0]
    wait_for(lambda: worker_pids(record.id).get(newcomer), 30, what="the replacement's worker")
    coordd.kill_node(first[0], signal.SIGKILL)  # a live peer, while the newcomer starts up
    final = client.wait(record.id, timeout=150)
    assert final.state == JobState.SUCCEEDED, final.reason
    assert final.restarts == 0
    assert not set(first[::2]) & set(final.node_ids)
    assert_no_committed_step_lost(coordd, record.id)


@pytest.mark.timeout(120)
def test_joiners_alone_never_start_a_new_lineage(tmp_path):
    """Replicas started to join a running job hold no state: while no replica that does is in
    their quorum they discard every step, then heal from the first one that comes."""
    import subprocess
    import sys
    import time

    from coordinator.localcluster import wait_for as wait
    from coordinator.quorum import _free_port

    port = _free_port("127.0.0.1")
    ckpt = tmp_path / "ckpt"
    base = {**os.environ, "TORCHFT_LIGHTHOUSE": f"http://127.0.0.1:{port}", "RUST_LOG": "warn",
            "COORD_FT_MODE": "inprocess", "COORD_FT_MIN_REPLICAS": "2",
            "COORD_CHECKPOINT_DIR": str(ckpt), "TORCHFT_QUORUM_RETRIES": "1000"}
    procs = [subprocess.Popen([sys.executable, "-m", "coordinator.quorum", "--bind",
                               f"127.0.0.1:{port}", "--min-replicas", "2"], cwd=ROOT)]

    def worker(replica: int, steps: int, joining: bool) -> subprocess.Popen:
        env = {**base, "REPLICA_GROUP_ID": str(replica), "COORD_NODE_ID": f"n{replica}",
               "COORD_FT_JOIN": "1" if joining else "0"}
        procs.append(subprocess.Popen(
            [sys.executable, "train.py", "--steps", str(steps), "--ckpt-every", "20",
             "--step-sleep", "0.02"], cwd=ROOT / "examples" / "elastic", env=env,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        return procs[-1]
    try:
        first = [worker(0, 40, False), worker(1, 40, False)]
        assert all(p.wait(60) == 0 for p in first)  # a durable checkpoint at step 40
        joiners = [worker(2, 80, True), worker(3, 80, True)]
        time.sleep(4)  # they meet in a quorum of two, with nothing to heal from
        assert [p.poll() for p in joiners] == [None, None]
        assert history(tmp_path, "ckpt").steps == list(range(1, 41))  # nothing committed
        worker(4, 80, False)  # holds the state (from disk): the joiners heal from it
        wait(lambda: all(p.poll() is not None for p in procs[-3:]), 60, what="the job's end")
        assert all(p.returncode == 0 for p in procs[-3:])
        done = history(tmp_path, "ckpt")
        assert done.ok and done.steps == list(range(1, 81)) and done.lost == []
    finally:
        for p in procs:
            p.kill()
            p.wait()


@pytest.mark.timeout(240)
def test_a_restarted_coordd_takes_its_quorum_service_back(tmp_path):
    """coordd crashes under an in-process job and a node dies while it is down. coordd comes
    back: it takes the job's Lighthouse back on the same port (one Lighthouse, supervised
    again), learns from the provider that the node is gone, and its replacement meets the
    survivors' quorum instead of a second one."""
    from tests.net import free_port

    listen, state = f"127.0.0.1:{free_port()}", tmp_path / "state"
    flags, env = ("--heartbeat-timeout", "3"), {"COORDD_STOP_GRACE_S": "3"}
    server = start_coordd(state, *flags, env=env, listen=listen)
    try:
        with server.client() as client:
            record = submit(client, tmp_path)
            started = wait_for(lambda: events(client, record.id, "quorum.started"), 60,
                               what="the quorum service")
            wait_for(lambda: reached(server, record.id, 40), 90, what="step 40")
            victim = client.get(record.id).node_ids[1]
        bind = f"127.0.0.1:{started[0]['address'].rpartition(':')[2]}"
        [orphan] = _pids_with_arg(bind)
        server.process.send_signal(signal.SIGKILL)
        server.process.wait()
        server.kill_node(victim, signal.SIGKILL)  # dies while coordd is down
        server = start_coordd(state, *flags, env=env, listen=listen)
        taken_back = wait_for(lambda: [p for p in _pids_with_arg(bind) if p != orphan], 30,
                              what="the Lighthouse to be taken back on its port")
        assert len(taken_back) == 1 and orphan not in _pids_with_arg(bind)
        with server.client() as client:
            wait_for(lambda: [e for e in events(client, record.id, "generation.reformed")
                              if e["added"]], 90, what="a replacement to join")
            # Found by asking the provider, not after the 30 s restart grace.
            assert "its agent is gone (local provider)" in server.log_path.read_text()
            final = client.wait(record.id, timeout=150)
        assert final.state == JobState.SUCCEEDED, final.reason
        assert final.restarts == 0
        assert_no_committed_step_lost(server, record.id)
        assert not _pids_with_arg(bind)  # stopped with the job
    finally:
        server.stop()


@pytest.mark.timeout(180)
def test_a_frozen_node_is_dropped_in_place_and_fenced_when_it_wakes(coordd, client, tmp_path):
    """SIGSTOP (a frozen host, its socket open): heartbeats stop, the survivors go on without
    it, and when it wakes (SIGCONT) nothing it still runs is accepted."""
    record = submit(client, tmp_path)
    wait_for(lambda: reached(coordd, record.id, 40), 90, what="step 40")
    frozen = client.get(record.id).node_ids[1]
    coordd.kill_node(frozen, signal.SIGSTOP)
    try:
        wait_for(lambda: [e for e in events(client, record.id, "generation.reformed")
                          if e["cause"] == "node_lost"], 30, what="the frozen node to be dropped")
        step_then = history(coordd, record.id).lineage[-1].step
        wait_for(lambda: reached(coordd, record.id, step_then + 10), 30,
                 what="the survivors to go on")
    finally:
        coordd.kill_node(frozen, signal.SIGCONT)
    wait_for(lambda: not worker_pids(record.id).get(frozen), 60,
             what="the woken node's stale worker to be stopped")
    final = client.wait(record.id, timeout=150)
    assert final.state == JobState.SUCCEEDED, final.reason
    assert frozen not in final.node_ids and final.restarts == 0
    assert_no_committed_step_lost(coordd, record.id)
