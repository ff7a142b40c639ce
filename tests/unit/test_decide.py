"""The reconciler's decisions, one step at a time, with a fake clock."""

from __future__ import annotations

import copy
import dataclasses

from hypothesis import given, settings
from hypothesis import strategies as st

from contract.exits import PEER_LOST_EXIT
from contract.states import JobState, NodeState
from coordinator.reconciler import plan
from coordinator.reconciler.decide import decide
from coordinator.reconciler.events import (Cancel, NodeChanged, NodesCreated, NodesForgotten,
                                           WorkerExited, WorkerExits, WorkerFinished,
                                           WorkerInProcess, coalesce)
from coordinator.reconciler.policy import timings
from coordinator.reconciler.simulate import Simulation
from coordinator.reconciler.view import JobView, NodeView, Policy, WorkerExit

POLICY = timings(target=3, minimum=2, max_restarts=1, wait_for_min_s=60, nproc_per_node=1,
                 stop_grace_s=5, failure_settle_s=1, scale_up_settle_s=2, initial_full_wait_s=30,
                 scale_up_min_runtime_s=15)


class Job(Simulation):
    """The real decide + evolve; reads go to the current view, changes arrive as events."""

    def __getattr__(self, name: str):
        return getattr(self.view, name)

    def exit(self, exit_: WorkerExit) -> None:
        self.hear(WorkerExited(self.view.worker_generation, exit_), exit_.time)

    def node(self, node_id: str, state: NodeState, reconnecting: bool = False) -> None:
        self.hear(NodeChanged(dataclasses.replace(self.view.nodes[node_id], state=state,
                                                  reconnecting=reconnecting)))

    def finish(self, now: float, member: str | None = None) -> None:
        """A replica (the first member's, by default) reported the last step."""
        member = member or self.view.members[0]
        self.hear(WorkerFinished(self.view.worker_generation, member,
                                 self.view.ranks_of(member).start), now)

    def joined_quorum(self, *ranks: int) -> None:
        for m in self.view.members:
            for rank in self.view.ranks_of(m):
                if rank in ranks:
                    self.hear(WorkerInProcess(self.view.worker_generation, m, rank))


def new_job(policy: Policy = POLICY) -> Job:
    return Job(JobView("j", JobState.PENDING, 0, 0, policy))


def step(job: Job, now: float) -> list:
    return job.step(now)


def join(job: Job, node_id: str, now: float) -> None:
    """A node the job asked for registered (the provider's answer to one Acquire)."""
    job.hear(NodesCreated((NodeView(node_id, NodeState.READY, "127.0.0.1", 29500, now),), 1),
             now)


def running_job(policy: Policy = POLICY) -> Job:
    job = new_job(policy)
    step(job, 0)
    for i in range(policy.target):
        join(job, f"n{i}", 1)
    step(job, 1)
    return job


def kinds(actions: list) -> list[type]:
    return [type(a) for a in actions]


def test_a_new_job_asks_for_its_nodes_and_starts_when_all_have_joined():
    view = new_job()
    actions = step(view, 0)
    assert plan.Acquire(3, "0 of 3 nodes healthy") in actions
    assert view.state == JobState.PROVISIONING
    assert step(view, 0.5) == []
    for i in range(3):
        join(view, f"n{i}", 1)
    actions = step(view, 1)
    assert plan.StartGeneration(("n0", "n1", "n2"), "start") in actions
    assert view.state == JobState.RUNNING and view.epoch == 1


def test_node_loss_reforms_without_it_and_asks_for_a_replacement():
    view = running_job()
    view.node("n0", NodeState.LOST)
    actions = step(view, 10)
    assert view.state == JobState.RECONFIGURING and view.reconfigure_cause == "node_lost"
    assert plan.StopGeneration in kinds(actions) and plan.Acquire(1, "2 of 3 nodes healthy") in actions
    assert step(view, 10.1) == []  # survivors' workers have not exited yet
    for rank, node in ((1, "n1"), (2, "n2")):
        view.exit(WorkerExit(node, rank, -15, 10.2))
    actions = step(view, 10.3)
    start = next(a for a in actions if isinstance(a, plan.StartGeneration))
    assert start.node_ids == ("n1", "n2")  # the lost node is never the master
    assert view.restarts == 0  # a node loss never costs a restart


def test_forgotten_nodes_leave_the_view_only_once_lost_or_gone_and_not_members():
    view = running_job(dataclasses.replace(POLICY, mode="inprocess"))
    view.node("n0", NodeState.LOST)
    view.node("n1", NodeState.LOST)
    join(view, "n3", 2)
    view.hear(NodesForgotten(("n0", "n1", "n3")))
    assert set(view.nodes) == {"n0", "n1", "n2", "n3"}  # members, and a live node, stay
    step(view, 3)  # the lost members are dropped from the quorum
    view.hear(NodesForgotten(("n0", "n1", "n3")))
    assert set(view.nodes) == {"n2", "n3"}
    assert kinds(step(view, 4)) == [plan.Reform]  # decisions go on without them: n3 joins
    assert view.members == ["n2", "n3"]


def test_survivors_that_never_report_do_not_block_recovery_forever():
    view = running_job()
    view.node("n0", NodeState.LOST)
    step(view, 10)
    assert not any(isinstance(a, plan.StartGeneration) for a in step(view, 12))
    assert any(isinstance(a, plan.StartGeneration) for a in step(view, 10 + 5 + 5.1))


def test_a_suspect_node_whose_peers_failed_is_dropped_without_waiting_or_charging():
    view = running_job()
    view.node("n0", NodeState.SUSPECT)
    assert step(view, 10) == []  # a blip alone: wait for the reconnect grace
    view.exit(WorkerExit("n1", 1, 1, 10.1))
    actions = step(view, 10.1)
    assert view.reconfigure_cause == "node_lost" and view.restarts == 0
    assert "n0" in actions[0].reason


def test_worker_failures_use_the_restart_budget_then_fail_the_job():
    view = running_job()
    view.exit(WorkerExit("n2", 2, 3, 10))
    assert step(view, 10.5) == []  # within the settle window
    step(view, 11.1)
    assert view.state == JobState.RECONFIGURING and view.restarts == 1
    for rank in (0, 1):
        view.exit(WorkerExit(f"n{rank}", rank, -15, 11.2))
    step(view, 11.3)
    assert view.state == JobState.RUNNING and view.epoch == 2
    view.exit(WorkerExit("n0", 0, 7, 20))
    actions = step(view, 21.5)
    assert view.state == JobState.FAILED
    reason = actions[0].reason
    assert "rank 0" in reason and "code 7" in reason and "max_restarts=1" in reason


def test_success_when_every_rank_exits_zero():
    view = running_job()
    for rank in range(3):
        view.exit(WorkerExit(f"n{rank}", rank, 0, 10))
    actions = step(view, 10)
    assert view.state == JobState.SUCCEEDED
    assert plan.Release(("n0", "n1", "n2"), "job succeeded") in actions


def test_below_minimum_for_too_long_fails_with_a_reason():
    view = running_job()
    view.node("n0", NodeState.LOST)
    view.node("n1", NodeState.LOST)
    step(view, 10)
    assert view.below_min_since == 10
    step(view, 69)
    assert view.state == JobState.RECONFIGURING
    actions = step(view, 70.5)
    assert view.state == JobState.FAILED
    assert "minimum 2" in actions[0].reason and "wait_for_min_s" in actions[0].reason


def test_joins_close_together_are_taken_in_one_reconfiguration():
    view = running_job(dataclasses.replace(POLICY, target=4))
    view.node("n0", NodeState.LOST)
    view.node("n1", NodeState.LOST)
    step(view, 10)
    for rank in (2, 3):
        view.exit(WorkerExit(f"n{rank}", rank, -15, 10.1))
    step(view, 10.2)
    assert view.state == JobState.RUNNING and view.members == ["n2", "n3"]
    join(view, "n4", 11)
    assert step(view, 14) == []  # generation 2 has not run long enough to be worth a restart
    join(view, "n5", 24)
    assert step(view, 25) == []  # waiting for joins close together to settle
    step(view, 26.1)
    assert view.state == JobState.RECONFIGURING and view.reconfigure_cause == "scale_up"
    for rank in (0, 1):
        view.exit(WorkerExit(view.members[rank], rank, 0, 26.2))
    actions = step(view, 26.3)
    start = next(a for a in actions if isinstance(a, plan.StartGeneration))
    assert start.node_ids == ("n2", "n3", "n4", "n5")  # one restart for both newcomers


def test_cancel_stops_and_releases_everything():
    view = running_job()
    view.hear(Cancel("user"))
    actions = step(view, 5)
    assert kinds(actions) == [plan.Transition, plan.StopGeneration, plan.Release]
    assert view.state == JobState.CANCELLED and step(view, 6) == []


events = st.lists(st.tuples(
    st.sampled_from(["lose", "suspect", "recover", "join", "exit0", "exit1", "tick", "finish"]),
    st.integers(0, 5), st.floats(0.01, 20)), max_size=60)


def happen(view: Job, kind: str, index: int, now: float, joined: int) -> int:
    """One random event from `events` (index picks the node or member); returns how many
    nodes have joined so far (the next one's number)."""
    ids = sorted(view.nodes)
    node = view.nodes[ids[index % len(ids)]]
    if kind == "lose" and node.state != NodeState.GONE:
        view.node(node.id, NodeState.LOST)
    elif kind == "suspect" and node.state in (NodeState.READY, NodeState.ASSIGNED):
        view.node(node.id, NodeState.SUSPECT)
    elif kind == "recover" and node.state == NodeState.SUSPECT:
        view.node(node.id, NodeState.ASSIGNED)
    elif kind == "join" and view.requested:
        join(view, f"n{joined}", now)
        return joined + 1
    elif kind == "finish" and view.inproc.finished_at is None and view.members:
        view.finish(now)
    elif kind.startswith("exit") and view.members:
        member = view.members[index % len(view.members)]
        rank = view.ranks_of(member).start
        view.exit(WorkerExit(member, rank, int(kind[-1]), now))
    return joined


@settings(max_examples=300, deadline=None)
@given(events)
def test_invariants_hold_under_random_events(sequence):
    view = running_job(dataclasses.replace(POLICY, max_restarts=2))
    now, joined = 1.0, 3
    for kind, index, dt in sequence:
        now += dt
        joined = happen(view, kind, index, now, joined)
        before_state, before_gen = view.state, view.epoch
        actions = step(view, now)
        for a in actions:
            if isinstance(a, plan.StartGeneration):
                assert before_state in (JobState.PROVISIONING, JobState.RECONFIGURING)
                assert POLICY.minimum <= len(a.node_ids) <= POLICY.target
                assert len(set(a.node_ids)) == len(a.node_ids)
                assert all(view.nodes[n].state not in (NodeState.LOST, NodeState.GONE)
                           for n in a.node_ids)
        assert view.epoch - before_gen <= 1  # never two generations at once
        assert view.restarts <= 2
        assert view.requested >= 0
        if view.state.terminal:
            assert decide(view, now + 100) == []
            break


class Unchanged(Job):
    """Checks that `evolve` never changes a view it was given: views share the containers a
    message did not change, so a change in place would reach every earlier view."""

    def hear(self, event, now=None) -> None:
        old, before = self.view, copy.deepcopy(self.view)
        super().hear(event, now)
        assert old == before

    def step(self, now: float) -> list:
        old, before = self.view, copy.deepcopy(self.view)
        actions = super().step(now)
        assert old == before
        return actions


@settings(max_examples=100, deadline=None)
@given(events, st.sampled_from(["restart", "inprocess"]))
def test_evolve_never_changes_the_view_it_is_given(sequence, mode):
    policy = dataclasses.replace(POLICY, mode=mode)
    view = Unchanged(JobView("j", JobState.PENDING, 0, 0, policy))
    step(view, 0)
    for i in range(POLICY.target):
        join(view, f"n{i}", 1)
    now, joined = 1.0, 3
    for kind, index, dt in sequence:
        now += dt
        joined = happen(view, kind, index, now, joined)
        step(view, now)
    view.hear(WorkerExits(tuple(WorkerExited(view.worker_generation, WorkerExit(m, r, 0, now))
                                for m in view.members for r in view.ranks_of(m))), now)


def test_exits_heard_together_count_as_each_in_turn():
    one, many = running_job(), running_job()
    reports = [WorkerExited(1, WorkerExit("n1", 1, 0, 5)),
               WorkerExited(1, WorkerExit("n1", 1, 9, 6)),   # a second report of rank 1
               WorkerExited(0, WorkerExit("n2", 2, 0, 5)),   # a stale generation's
               WorkerExited(1, WorkerExit("n0", 0, 0, 5))]
    for report in reports:
        one.hear(report, 7)
    many.hear(WorkerExits(tuple(reports)), 7)
    assert one.view == many.view
    assert {r: e.code for r, e in many.exits.items()} == {1: 0, 0: 0}  # first wins, stale ignored


def test_a_burst_of_events_keeps_its_order_and_merges_only_exits_in_a_row():
    one, merged = running_job(), running_job()
    lost = dataclasses.replace(one.nodes["n2"], state=NodeState.LOST)
    burst = [WorkerExited(1, WorkerExit("n0", 0, 0, 5)),
             WorkerExits((WorkerExited(1, WorkerExit("n1", 1, 3, 6)),)),
             NodeChanged(lost), WorkerExited(1, WorkerExit("n2", 2, 1, 7))]
    heard = coalesce(burst)
    assert kinds(heard) == [WorkerExits, NodeChanged, WorkerExited]
    for event in burst:
        one.hear(event, 8)
    for event in heard:
        merged.hear(event, 8)
    assert one.view == merged.view


def test_a_leaving_node_drains_the_generation_and_its_clean_exits_are_not_success():
    view = running_job()
    view.node("n2", NodeState.DRAINING)
    actions = step(view, 10)
    assert view.state == JobState.RECONFIGURING and view.reconfigure_cause == "node_leaving"
    assert plan.StopGeneration in kinds(actions)
    assert any(isinstance(a, plan.Acquire) for a in actions)  # replacement asked for at once
    for rank in range(3):
        view.exit(WorkerExit(f"n{rank}", rank, 0, 10.5))
    actions = step(view, 10.6)
    assert view.state == JobState.RUNNING and view.members == ["n0", "n1"]
    assert view.restarts == 0


def test_peer_lost_exits_wait_for_node_loss_detection_before_charging():
    view = running_job()
    view.exit(WorkerExit("n1", 1, 75, 10))
    assert step(view, 13) == []  # past the ordinary settle window, still waiting
    step(view, 17.1)
    assert view.state == JobState.RECONFIGURING and view.restarts == 1


# in-process mode ([fault_tolerance] mode = "inprocess") ---------------------------------------
INPROCESS = dataclasses.replace(POLICY, mode="inprocess")
AUTO = dataclasses.replace(POLICY, mode="auto")


step_inprocess = step  # the same reducer handles the in-process actions


def test_inprocess_node_loss_reforms_in_place_and_asks_for_a_replacement():
    view = running_job(INPROCESS)
    view.node("n1", NodeState.LOST)
    actions = step_inprocess(view, 10)
    assert plan.StopGeneration not in kinds(actions) and plan.Transition not in kinds(actions)
    [reform] = [a for a in actions if isinstance(a, plan.Reform)]
    assert reform.members == ("n0", "n2") and reform.added == () and reform.cause == "node_lost"
    assert any(isinstance(a, plan.Acquire) and a.count == 1 for a in actions)
    assert view.state == JobState.RUNNING
    assert step_inprocess(view, 10.5) == []  # idempotent: nothing new until something changes


def test_inprocess_replacement_joins_the_running_replicas_with_a_fresh_slot():
    view = running_job(INPROCESS)
    view.node("n1", NodeState.LOST)
    step_inprocess(view, 10)
    join(view, "n3", 11)
    [reform] = [a for a in step_inprocess(view, 11) if isinstance(a, plan.Reform)]
    assert reform.added == ("n3",) and reform.members == ("n0", "n2", "n3")
    assert list(view.ranks_of("n3")) == [3]  # never a rank that a lost replica used
    assert view.state == JobState.RUNNING
    for node_id in view.members:
        rank = view.ranks_of(node_id).start
        view.exit(WorkerExit(node_id, rank, 0, 20))
    step_inprocess(view, 20)
    assert view.state == JobState.SUCCEEDED


def test_inprocess_leaving_node_is_stopped_alone_then_dropped_and_released():
    view = running_job(INPROCESS)
    view.node("n0", NodeState.DRAINING)
    actions = step_inprocess(view, 10)
    assert [a.node_ids for a in actions if isinstance(a, plan.StopNodes)] == [("n0",)]
    assert plan.StopGeneration not in kinds(actions)
    assert any(isinstance(a, plan.Acquire) for a in actions)  # replacement asked at the notice
    assert not any(isinstance(a, plan.StopNodes) for a in step_inprocess(view, 10.2))
    view.exit(WorkerExit("n0", 0, 0, 11))  # it left at a step boundary
    actions = step_inprocess(view, 11)
    [reform] = [a for a in actions if isinstance(a, plan.Reform)]
    assert reform.cause == "node_leaving" and reform.members == ("n1", "n2")
    actions = step_inprocess(view, 11.1)  # the next tick hands the drained node back
    assert any(isinstance(a, plan.Release) and a.node_ids == ("n0",) for a in actions)
    assert view.state == JobState.RUNNING and view.exits == {}


def test_inprocess_losing_every_replica_falls_back_to_a_restart_from_disk():
    view = running_job(INPROCESS)
    for node_id in ("n0", "n1", "n2"):
        view.node(node_id, NodeState.LOST)
    step_inprocess(view, 10)
    assert view.state == JobState.RECONFIGURING and view.restarts == 0
    for index in range(3, 5):
        join(view, f"n{index}", 12)
    actions = step_inprocess(view, 12)
    assert any(isinstance(a, plan.StartGeneration) for a in actions)
    assert view.state == JobState.RUNNING and view.members == ["n3", "n4"]


def test_inprocess_a_failed_worker_restarts_in_place_under_a_fresh_rank_and_is_charged():
    view = running_job(INPROCESS)
    view.exit(WorkerExit("n1", 1, -9, 10))  # OOM-killed, say; its node stays healthy
    actions = step_inprocess(view, 10)  # at once: no settle, nobody else stops
    assert kinds(actions) == [plan.ChargeRestart, plan.Reform]
    reform = actions[1]
    assert reform.cause == "worker_failed" and reform.added == ("n1",)
    assert reform.members == ("n0", "n1", "n2") and "exited with code -9" in reform.reason
    assert view.state == JobState.RUNNING and view.restarts == 1
    assert list(view.ranks_of("n1")) == [3] and view.exits == {}
    assert step_inprocess(view, 10.5) == []
    view.exit(WorkerExit("n0", 0, 1, 20))  # another failure: the budget (1) is spent
    assert step_inprocess(view, 20) == []  # settling: a node loss may be the cause
    [failed] = [a for a in step_inprocess(view, 21) if isinstance(a, plan.Transition)]
    assert failed.to == JobState.FAILED and "max_restarts=1 used up" in failed.reason


def test_inprocess_a_node_of_several_replicas_restarts_in_place_only_when_all_failed():
    view = running_job(dataclasses.replace(INPROCESS, nproc_per_node=2, max_restarts=2))
    view.exit(WorkerExit("n1", 2, -9, 10))  # n1's rank 3 still trains
    assert not any(isinstance(a, plan.Reform) for a in step_inprocess(view, 10))
    view.exit(WorkerExit("n1", 3, -9, 10.2))
    [reform] = [a for a in step_inprocess(view, 10.3) if isinstance(a, plan.Reform)]
    assert reform.added == ("n1",) and list(view.ranks_of("n1")) == [6, 7]
    assert view.exits == {} and view.restarts == 1


def test_inprocess_a_failure_after_training_finished_is_not_restarted_in_place():
    """Training is over: a joiner started now could find no peer left to heal from."""
    view = running_job(INPROCESS)
    view.finish(10)  # a replica reported the last step
    view.exit(WorkerExit("n1", 1, -11, 10.1))  # a crash in teardown, say
    assert step_inprocess(view, 10.2) == []  # no restart in place: settling first
    step_inprocess(view, 12)
    assert view.state == JobState.RECONFIGURING  # the restart path (it resumes at the end)


def test_inprocess_after_training_finished_members_that_did_not_reach_the_end_are_stopped():
    """n2 fell behind its peers (or never joined them): once they finished, no quorum will
    ever take it to the last step. n1, the leader, reached it and still saves its last."""
    view = running_job(INPROCESS)
    view.joined_quorum(0, 1, 2)
    view.finish(10)
    view.finish(10, "n1")
    view.exit(WorkerExit("n0", 0, 0, 10))
    assert step_inprocess(view, 10 + INPROCESS.finish_grace_s - 1) == []
    [stop] = step_inprocess(view, 10 + INPROCESS.finish_grace_s)
    assert isinstance(stop, plan.StopNodes) and stop.node_ids == ("n2",)
    assert step_inprocess(view, 200) == []  # n1 is left to finish, however long it takes
    view.exit(WorkerExit("n2", 2, -9, 201))  # killed at the end of its stop grace
    view.exit(WorkerExit("n1", 1, 0, 300))
    actions = step_inprocess(view, 300)
    assert view.state == JobState.SUCCEEDED and view.restarts == 0
    assert not any(isinstance(a, (plan.Reform, plan.Acquire)) for a in actions)


def test_inprocess_a_node_lost_after_training_finished_is_not_replaced():
    view = running_job(INPROCESS)
    view.finish(10)
    view.exit(WorkerExit("n0", 0, 0, 10))
    view.exit(WorkerExit("n1", 1, 0, 10))
    view.node("n2", NodeState.LOST)
    actions = step_inprocess(view, 11)
    assert not any(isinstance(a, (plan.Reform, plan.Acquire)) for a in actions)
    assert view.state == JobState.SUCCEEDED


def test_inprocess_failed_workers_with_no_replica_left_take_the_restart_path():
    view = running_job(INPROCESS)
    for rank, node_id in enumerate(view.members):
        view.exit(WorkerExit(node_id, rank, 1, 10))  # the script fails everywhere
    step_inprocess(view, 10)
    actions = step_inprocess(view, 11)
    assert not any(isinstance(a, plan.Reform) for a in actions)
    assert view.state == JobState.RECONFIGURING and view.restarts == 1


def test_inprocess_a_failed_worker_on_a_suspect_node_is_not_restarted_there():
    view = running_job(INPROCESS)
    view.node("n1", NodeState.SUSPECT)
    view.exit(WorkerExit("n1", 1, -9, 10))
    assert not any(isinstance(a, plan.Reform) for a in step_inprocess(view, 10))
    view.node("n1", NodeState.LOST)  # it was the machine: dropped, not charged
    [reform] = [a for a in step_inprocess(view, 10.5) if isinstance(a, plan.Reform)]
    assert reform.cause == "node_lost" and view.restarts == 0


def test_inprocess_replacement_is_asked_for_and_joins_while_the_lost_node_is_only_suspect():
    view = running_job(INPROCESS)
    view.node("n1", NodeState.SUSPECT)  # stream dropped: the grace has not run out
    actions = step_inprocess(view, 10)
    assert any(isinstance(a, plan.Acquire) and a.count == 1 for a in actions)
    assert not any(isinstance(a, plan.Reform) for a in actions)  # n1 may still come back
    join(view, "n3", 10.5)
    [reform] = [a for a in step_inprocess(view, 10.5) if isinstance(a, plan.Reform)]
    assert reform.added == ("n3",)
    view.node("n1", NodeState.LOST)
    [reform] = [a for a in step_inprocess(view, 12) if isinstance(a, plan.Reform)]
    assert reform.members == ("n0", "n2", "n3") and reform.cause == "node_lost"
    assert not any(isinstance(a, plan.Acquire) for a in step_inprocess(view, 12.5))


def test_after_a_coordd_restart_reconnecting_members_keep_their_places():
    """coordd came back: every member is SUSPECT until its agent reconnects. That is no
    reason to ask the provider for a whole new set of machines (in either mode)."""
    for policy, stepper in ((POLICY, step), (INPROCESS, step_inprocess)):
        view = running_job(policy)
        for node_id in view.members:
            view.node(node_id, NodeState.SUSPECT, reconnecting=True)
        assert stepper(view, 10) == []
        view.node("n1", NodeState.LOST)  # its grace ran out: now it is replaced
        actions = stepper(view, 40) + stepper(view, 41)
        assert [a.count for a in actions if isinstance(a, plan.Acquire)] == [1]


def test_inprocess_member_back_after_its_replacement_joined_trims_the_job_to_its_target():
    view = running_job(INPROCESS)
    view.node("n1", NodeState.SUSPECT)
    step_inprocess(view, 10)
    join(view, "n3", 10.5)
    step_inprocess(view, 10.5)  # n3 joins the running replicas
    view.node("n1", NodeState.READY)  # the blip is over: 4 replicas, target 3
    actions = step_inprocess(view, 11)
    assert [a.node_ids for a in actions if isinstance(a, plan.StopNodes)] == [("n3",)]
    assert plan.StopGeneration not in kinds(actions)
    assert not any(isinstance(a, plan.StopNodes) for a in step_inprocess(view, 11.2))
    view.exit(WorkerExit("n3", 3, -15, 12))  # stopped hard: not a failure of the job
    actions = step_inprocess(view, 12)
    [reform] = [a for a in actions if isinstance(a, plan.Reform)]
    assert reform.members == ("n0", "n1", "n2")
    actions = step_inprocess(view, 12.1)
    assert any(isinstance(a, plan.Release) and a.node_ids == ("n3",) for a in actions)
    assert view.state == JobState.RUNNING and view.restarts == 0


# auto mode (the default): in-process once every worker joined the quorum ---------------------
def test_auto_mode_restarts_the_group_until_every_worker_joined_the_quorum():
    view = running_job(AUTO)
    view.joined_quorum(0, 1)  # rank 2 has not joined (yet), or its script cannot
    assert not view.inprocess
    view.node("n1", NodeState.LOST)
    actions = step_inprocess(view, 10)
    assert plan.StopGeneration in kinds(actions) and view.state == JobState.RECONFIGURING


def test_auto_mode_re_forms_in_place_once_every_worker_joined_until_the_next_restart():
    view = running_job(AUTO)
    view.joined_quorum(0, 1, 2)
    assert kinds(step_inprocess(view, 5)) == [plan.ConfirmInProcess]
    assert view.inprocess
    view.node("n1", NodeState.LOST)
    actions = step_inprocess(view, 10)
    assert plan.StopGeneration not in kinds(actions)
    assert [a.members for a in actions if isinstance(a, plan.Reform)] == [("n0", "n2")]
    for node_id in ("n0", "n2"):  # every replica gone: restart from disk, choose again
        view.node(node_id, NodeState.LOST)
    step_inprocess(view, 11)
    for index in range(3, 6):
        join(view, f"n{index}", 12)
    step_inprocess(view, 12)
    assert view.state == JobState.RUNNING and view.members == ["n3", "n4", "n5"]
    assert not view.inprocess


def test_spares_are_kept_ready_and_take_a_lost_nodes_place_at_once():
    view = new_job(dataclasses.replace(INPROCESS, spares=1))
    assert [a.count for a in step_inprocess(view, 0) if isinstance(a, plan.Acquire)] == [4]
    for i in range(4):
        join(view, f"n{i}", 1)
    step_inprocess(view, 1)
    assert view.members == ["n0", "n1", "n2"]  # n3 waits, idle
    assert not any(isinstance(a, (plan.Release, plan.Acquire)) for a in step_inprocess(view, 2))
    view.node("n1", NodeState.LOST)
    actions = step_inprocess(view, 10) + step_inprocess(view, 10.1)
    assert [a.added for a in actions if isinstance(a, plan.Reform) and a.added] == [("n3",)]
    assert [a.count for a in actions if isinstance(a, plan.Acquire)] == [1]  # a new spare
    join(view, "n4", 11)
    join(view, "n5", 11)  # one more than asked for: handed back
    actions = step_inprocess(view, 11)
    assert [a.node_ids for a in actions if isinstance(a, plan.Release)] == [("n5",)]


@settings(max_examples=300, deadline=None)
@given(events)
def test_inprocess_invariants_hold_under_random_events(sequence):
    """Random losses, joins and exits in in-process mode: restarts stay within the budget,
    a member's rank is never reused, and a second look at the same view asks for nothing."""
    view = running_job(dataclasses.replace(INPROCESS, max_restarts=2))
    now, joined, used = 1.0, 3, {0, 1, 2}
    for kind, index, dt in sequence:
        now += dt
        joined = happen(view, kind, index, now, joined)
        actions = step_inprocess(view, now)
        for a in actions:
            if isinstance(a, plan.Reform):
                fresh = {view.slots[n] for n in a.added}
                assert not fresh & used, "a rank was reused"
                used |= fresh
            elif isinstance(a, plan.StartGeneration):  # a new generation numbers from 0
                used = set(range(len(a.node_ids)))
        assert view.restarts <= 2
        assert view.requested >= 0
        if view.state.terminal:
            assert decide(view, now + 1000) == []
            break
        # A step that changed the state or the membership may lead to a next one.
        if not any(isinstance(a, (plan.Transition, plan.Reform, plan.StartGeneration))
                   for a in actions):
            again = [a for a in decide(view, now) if not isinstance(a, plan.MarkBelowMinimum)]
            assert again == [], again


def test_a_failure_is_named_by_the_rank_that_failed_not_by_the_peers_it_took_down():
    view = running_job()
    view.exit(WorkerExit("n0", 0, PEER_LOST_EXIT, 10.0))  # its peer crashed under it
    view.exit(WorkerExit("n1", 1, 1, 10.2))
    actions = step(view, 11.5)
    assert view.state == JobState.RECONFIGURING
    transition = next(a for a in actions if isinstance(a, plan.Transition))
    assert "rank 1 on node n1 exited with code 1" in transition.reason


def test_a_whole_inprocess_life_runs_on_decide_and_evolve_alone():
    """Start, a node loss, the in-place re-formation, the replacement joining, the finish:
    the real reconciler with no runner, sockets or sleeps (what a simulator builds on)."""
    job = new_job(INPROCESS)
    assert [a.count for a in step(job, 0) if isinstance(a, plan.Acquire)] == [3]
    for i in range(3):
        join(job, f"n{i}", 1)
    assert plan.StartGeneration in kinds(step(job, 1))
    assert (job.epoch, job.worker_generation) == (1, 1)
    job.joined_quorum(0, 1, 2)
    job.node("n1", NodeState.LOST)
    actions = step(job, 10)
    assert [a.cause for a in actions if isinstance(a, plan.Reform)] == ["node_lost"]
    assert (job.epoch, job.worker_generation, job.members) == (2, 1, ["n0", "n2"])
    join(job, "n3", 11)
    [reform] = [a for a in step(job, 11) if isinstance(a, plan.Reform)]
    assert reform.added == ("n3",) and list(job.ranks_of("n3")) == [3]
    assert (job.epoch, job.worker_generation) == (3, 1)  # re-formed in place: no restart
    job.finish(20)
    for member in job.members:
        rank = job.ranks_of(member).start
        job.exit(WorkerExit(member, rank, 0, 21))
    actions = step(job, 21)
    assert job.state == JobState.SUCCEEDED and job.restarts == 0
    assert [a.node_ids for a in actions if isinstance(a, plan.Release)] == [("n0", "n1", "n2", "n3")]
