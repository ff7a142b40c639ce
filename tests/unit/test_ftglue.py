"""ReplicaClient, coord's wrapper of torchft's ManagerClient: quorum ids every member computes
alike, a local commit vote, and the watchdog that closes the old group of a stalled quorum."""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace

import pytest

pytest.importorskip("torchft")

from trainer.elastic.ftglue import ReplicaClient  # noqa: E402


class ScriptedClient:
    """Stands in for torchft's native client: answers `_quorum` with the next scripted
    quorum (id, members, max step[, members up to date]), after `delay` seconds."""

    def __init__(self, *quorums: tuple, delay: float = 0.0) -> None:
        self.quorums, self.delay, self.commits = list(quorums), delay, 0

    def _quorum(self, **kwargs):
        time.sleep(self.delay)
        quorum_id, members, max_step, *up_to_date = self.quorums.pop(0)
        return SimpleNamespace(quorum_id=quorum_id, replica_ids=members, max_step=max_step,
                               replica_world_size=len(members),
                               max_world_size=up_to_date[0] if up_to_date else len(members))

    def should_commit(self, *args, **kwargs):
        self.commits += 1
        return False


def client(inner: ScriptedClient, stall_s: float = 5.0) -> tuple[ReplicaClient, list[float]]:
    stalls: list[float] = []
    return ReplicaClient(inner, lambda: stalls.append(time.monotonic()), stall_s), stalls


def test_members_agree_on_new_ids_and_keep_them_while_nothing_changes():
    script = [(1, ["a", "b"], 5), (1, ["a", "b"], 6), (1, ["a", "c"], 7), (1, ["a", "c"], 8)]
    ids = []
    for _member in ("a", "b"):  # two members given the same answers
        wrapped, _ = client(ScriptedClient(*script))
        ids.append([wrapped._quorum(step=s[2]).quorum_id for s in script])
    assert ids[0] == ids[1]
    first, same, changed, again = ids[0]
    assert first == same and changed != first and again == changed


def test_a_replica_behind_the_quorum_gets_a_new_group_id():
    wrapped, _ = client(ScriptedClient((3, ["a", "b"], 10), (3, ["a", "b"], 12)))
    before = wrapped._quorum(step=10).quorum_id
    assert wrapped._quorum(step=11).quorum_id != before  # steps were committed without it


def test_a_quorum_that_lets_in_a_healing_joiner_says_so_until_the_next():
    wrapped, _ = client(ScriptedClient((3, ["a", "b"], 10), (3, ["a", "b", "c"], 11, 2),
                                       (3, ["a", "b", "c"], 12)))
    seen = []
    for step in (10, 11, 12):
        wrapped._quorum(step=step)
        seen.append(wrapped.healing)
    assert seen == [False, True, False]  # "c" sat out the second quorum's first step


def test_the_commit_vote_of_a_group_of_one_is_its_own():
    inner = ScriptedClient()
    wrapped, _ = client(inner)
    assert wrapped.should_commit(0, 7, True) is True
    assert wrapped.should_commit(0, 7, False) is False
    assert inner.commits == 0


def test_a_quorum_pending_past_stall_s_closes_the_old_group_once():
    wrapped, stalls = client(ScriptedClient((1, ["a"], 0), delay=0.4), stall_s=0.1)
    started = time.monotonic()
    wrapped._quorum(step=0)
    assert len(stalls) == 1 and 0.1 <= stalls[0] - started < 0.4


def test_a_quorum_in_time_closes_nothing_even_later():
    wrapped, stalls = client(ScriptedClient((1, ["a"], 0), delay=0.0), stall_s=0.1)
    wrapped._quorum(step=0)
    time.sleep(0.3)
    assert stalls == []


def test_a_late_watchdog_waits_for_nothing_and_closes_nothing_once_the_quorum_is_in():
    """The watchdog fires while `_quorum` returns: it must not close the group torchft is
    about to configure for the new quorum."""
    entered, release = threading.Event(), threading.Event()
    stalls: list[float] = []

    def slow_close() -> None:
        entered.set()
        release.wait(2)
        stalls.append(time.monotonic())

    wrapped = ReplicaClient(ScriptedClient((1, ["a"], 0), (1, ["a"], 1), delay=0.15),
                            slow_close, stall_s=0.05)
    worker = threading.Thread(target=wrapped._quorum, kwargs={"step": 0})
    worker.start()
    assert entered.wait(2)
    time.sleep(0.2)  # the native call has returned: `_quorum` waits for the close to finish
    assert worker.is_alive()
    release.set()
    worker.join(2)
    time.sleep(0.2)  # past another stall_s: an answered quorum is closed once, not again
    assert len(stalls) == 1


def test_the_watchdog_is_armed_afresh_for_every_quorum():
    wrapped, stalls = client(ScriptedClient((1, ["a"], 0), (1, ["a"], 1), (1, ["a"], 2),
                                            delay=0.06), stall_s=0.1)
    for step in range(3):  # 0.18 s of quorums in all, none pending 0.1 s
        wrapped._quorum(step=step)
    assert stalls == []


@pytest.mark.timeout(10)
def test_a_member_coord_drops_ends_the_wait_for_its_collective_and_is_never_counted():
    """A frozen peer holds a collective until its timeout; once coordd says it dropped that
    replica, this replica stops waiting at once and commits nothing with it in the quorum."""
    import torch

    from trainer.elastic.ftglue import Fence

    fence, closed = Fence(), []
    fence.close_group = lambda: closed.append(True)
    fence.quorum(["a_0:uuid1", "b_1:uuid2"])
    never = torch.futures.Future()  # the collective a frozen peer holds up
    pending = SimpleNamespace(_work=SimpleNamespace(get_future=lambda: never))
    threading.Timer(0.2, fence.drop, args=(["b_1"],)).start()
    started = time.monotonic()
    fence.wait(pending)
    assert time.monotonic() - started < 2.0
    assert closed == [True]  # the group with the given-up collective is left
    assert fence.counts_dropped() == ["b_1"]
    fence.quorum(["a_0:uuid1", "c_2:uuid3"])  # re-formed without it
    assert fence.counts_dropped() == []


def test_only_the_adapter_touches_torchfts_private_attributes():
    """A torchft upgrade is checked in ftglue.py alone: elsewhere the trainer reads no private
    attribute of another object (its own, a module's `os._exit`, or torch's LR scheduler's
    `_last_lr` in policy.py aside)."""
    import ast
    from pathlib import Path

    allowed = {("policy.py", "_last_lr")}
    found = []
    for path in (Path(__file__).parents[2] / "trainer").rglob("*.py"):
        if path.name == "ftglue.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Attribute) and node.attr.startswith("_")
                    and not node.attr.startswith("__")
                    and not (isinstance(node.value, ast.Name)
                             and node.value.id in ("self", "cls", "os", "sys", "torch"))
                    and (path.name, node.attr) not in allowed):
                found.append(f"{path.name}:{node.lineno} .{node.attr}")
    assert found == []
