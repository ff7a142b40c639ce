"""torchft 0.2.0 as coord uses it: one Manager per worker, a fix for Lighthouse restarts, and
no round trip for the commit vote.

torchft numbers quorums per Lighthouse process, starting again from 1 when it is restarted,
and a replica re-forms its process group only when the quorum id changes. After a restart a
replica could therefore keep a group its peers have left (seen here: its peers wait 10 s in
the rendezvous of the new group, then discard the step). `ReplicaClient` renumbers quorums:
a new number, a hash of (Lighthouse id, members, step at which it formed) that every member
computes alike, whenever (Lighthouse id, members) changes or this replica is behind the
quorum's step (steps were committed without it, so its peers went through another quorum).

Every coord worker is a replica group of one process, so the group's commit vote is that
process's own: `should_commit` answers it locally instead of asking the group's manager server
(about 1 ms a step here, on a step of about 12 ms).

A quorum can reach some replicas and not others: a Lighthouse killed while it answers a quorum
leaves the replicas it answered all-reducing in their old group, waiting for one it did not
answer, which waits for a quorum that needs them (they stalled for the whole collective
timeout, 10 s). A replica whose quorum is pending `stall_s` therefore closes its old group:
whoever waits in a collective on it fails at once, and the step is redone in a new quorum.

The Lighthouse counts every replica that heartbeats; coordd's membership is what counts. A
`Fence` holds the replicas coordd dropped (told through the worker's lifeline): no step is
committed in a quorum that has one, and when one is dropped while it is in this replica's
group, this replica stops waiting in the collective (a frozen peer would hold it there until
the collective's timeout) and leaves the group, so the step is redone in a new quorum.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Iterable
from datetime import timedelta
from typing import Any, Callable

import torch

from .errors import EnvironmentConfigError
from .logs import get_logger, quiet_torchft

log = get_logger(__name__)


class Fence:
    """Replicas coordd dropped from the job's membership, against the last quorum's members.
    Replica names are `make_manager`'s `replica_id`s (torchft adds ":uuid")."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._dropped: set[str] = set()
        self._members: set[str] = set()
        self._waiting: threading.Event | None = None  # set to stop waiting for an all-reduce
        # Leaves this replica's group, with a collective pending in it (make_manager).
        self.close_group: Callable[[], None] = lambda: None

    def drop(self, replicas: Iterable[str]) -> None:
        """Never count these again; stop waiting for a collective now if one is in it (the
        step is then discarded and the group left)."""
        with self._lock:
            self._dropped.update(replicas)
            hit = sorted(self._dropped & self._members)
            if hit and self._waiting is not None:
                self._waiting.set()
        if hit:
            log.warning("quorum.member_dropped", replicas=hit,
                        action="this step is discarded and redone without it")

    def wait(self, work: Any) -> None:
        """Wait for `work` (torchft's managed all-reduce) to end, or for coord to drop a member
        of this quorum meanwhile: closing a gloo group does not end a collective waiting in
        it, so the wait itself gives up then (the step is not committed: `counts_dropped`),
        leaving the collective to its abandoned group."""
        inner = getattr(work, "_work", None)  # None: torchft's no-op work after an error
        if inner is None:
            work.wait()
            return
        ended = threading.Event()
        with self._lock:
            self._waiting = ended
            if self._dropped & self._members:
                ended.set()
        try:
            inner.get_future().add_done_callback(lambda _fut: ended.set())
            ended.wait()
        finally:
            with self._lock:
                self._waiting = None
        if inner.get_future().done():
            work.wait()  # torchft's continuations and error reporting
        else:
            self.close_group()  # the collective is given up: the group cannot be used again

    def quorum(self, replica_ids: Iterable[str]) -> None:
        """The quorum torchft is about to configure the next group for."""
        with self._lock:
            self._members = {rid.split(":")[0] for rid in replica_ids}

    def counts_dropped(self) -> list[str]:
        """Dropped replicas in the current quorum: its steps must not be committed."""
        with self._lock:
            return sorted(self._dropped & self._members)


class ReplicaClient:
    """Wraps torchft's ManagerClient for a group of one: `_quorum` ids renumbered, the commit
    vote answered locally."""

    def __init__(self, client: Any, on_stall: Callable[[], None], stall_s: float,
                 fence: Fence | None = None) -> None:
        self._client, self.fence = client, fence or Fence()
        self._watchdog = Watchdog(stall_s, on_stall)
        self._last: tuple | None = None
        self._id = -1
        # Some replicas of the last quorum were behind and sit its first step out to heal:
        # they take part only from the next quorum, which should therefore come at once.
        self.healing = False
        self.members = 0  # replicas in the last quorum, the ones healing in it too

    def _quorum(self, *args: Any, **kwargs: Any) -> Any:
        self._watchdog.arm()
        try:
            result = self._client._quorum(*args, **kwargs)
        finally:
            self._watchdog.disarm()
        self.healing = result.replica_world_size > result.max_world_size
        self.members = result.replica_world_size
        self.fence.quorum(result.replica_ids)
        key = (result.quorum_id, tuple(sorted(result.replica_ids)))
        behind = result.max_step > kwargs.get("step", result.max_step)
        if key != self._last or behind:
            self._last = key
            digest = hashlib.sha256(repr((key, result.max_step)).encode()).digest()
            self._id = int.from_bytes(digest[:7], "big")
        result.quorum_id = self._id
        return result

    def should_commit(self, group_rank: int, step: int, should_commit: bool,
                      timeout: Any = None) -> bool:
        return should_commit

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)


class Watchdog:
    """Calls `on_stall` once when armed longer than `stall_s`. One thread for the replica's
    life (a timer thread started every step slowed short steps measurably).

    `on_stall` runs under the lock `disarm` takes: torchft configures the next group only
    after `_quorum` returns, which waits for it, so a late watchdog never closes that group."""

    def __init__(self, stall_s: float, on_stall: Callable[[], None]) -> None:
        self._stall_s, self._on_stall = stall_s, on_stall
        self._cond = threading.Condition()
        self._deadline: float | None = None
        threading.Thread(target=self._run, name="coord-quorum-watchdog", daemon=True).start()

    def arm(self) -> None:
        with self._cond:
            self._deadline = time.monotonic() + self._stall_s
            self._cond.notify()

    def disarm(self) -> None:
        with self._cond:
            self._deadline = None

    def _run(self) -> None:
        with self._cond:
            while True:
                left = None if self._deadline is None else self._deadline - time.monotonic()
                if left is None or left > 0:
                    self._cond.wait(left)
                    continue
                self._deadline = None
                try:
                    self._on_stall()
                except Exception as exc:  # the next stall must still be caught
                    log.warning("quorum.stall_handler_failed", error=repr(exc))


def make_manager(*, host: str, lighthouse: str, replica_id: str, min_replicas: int,
                 device: torch.device, timeout_s: float, quorum_timeout_s: float, stall_s: float,
                 load_state: Callable[[Any], None], state: Callable[[], Any],
                 fence: Fence) -> tuple[Any, Any]:
    """A Manager for a replica group of one process, which hosts that group's store itself.
    Returns (manager, store); keep the store alive as long as the manager."""
    from torch.distributed import TCPStore
    try:
        from torchft import Manager, ProcessGroupGloo, ProcessGroupNCCL
    except ImportError as exc:
        raise EnvironmentConfigError(
            f"in-process mode needs torchft on this node ({exc}): pip install 'coord[elastic]', "
            "or set [fault_tolerance] mode = \"restart\" in the job file") from exc

    timeout = timedelta(seconds=timeout_s)
    store = TCPStore(host, 0, is_master=True, wait_for_workers=False)
    pg = ProcessGroupNCCL(timeout=timeout) if device.type == "cuda" else \
        ProcessGroupGloo(timeout=timeout)
    # torchft commits a step only with `min_replica_size` replicas at the newest step; the
    # trainer counts every member of the quorum instead (see `quorum_members`), so 1 here.
    manager = Manager(pg=pg, load_state_dict=load_state, state_dict=state,
                      min_replica_size=1, use_async_quorum=True, timeout=timeout,
                      quorum_timeout=timedelta(seconds=quorum_timeout_s),
                      connect_timeout=timedelta(seconds=10), rank=0, world_size=1,
                      store_addr=host, store_port=store.port, lighthouse_addr=lighthouse,
                      hostname=host, replica_id=replica_id)
    manager._client = ReplicaClient(manager._client, lambda: _close_group(pg, stall_s), stall_s,
                                    fence)
    fence.close_group = lambda: _abandon_group(pg)
    quiet_torchft(manager)
    return manager, store


# Groups left with a collective pending in them. They are kept, not closed: closing a gloo
# group (or freeing it) waits for its collective to end, with a frozen peer until the
# collective's timeout, and holds up every thread of the process meanwhile. A frozen peer is
# rare; the few groups it leaves behind cost some idle sockets.
_ABANDONED: list[Any] = []


def _abandon_group(pg: Any) -> None:
    """Take this replica's group out of use at once; torchft makes a new one at the next
    quorum."""
    if pg._pg is not None:
        _ABANDONED.append(pg._pg)
        pg._pg = None


def _close_group(pg: Any, stall_s: float) -> None:
    if pg._pg is not None:  # a group from an earlier quorum, which peers may be waiting in
        log.warning("quorum.stalled", pending_s=stall_s,
                    action="closing this replica's group: peers waiting on it fail now")
        pg.abort()


# What the rest of the trainer does to a Manager that torchft offers no public call for: the
# one place that touches its private attributes, so a torchft upgrade is checked here.
def apply_pending_heal(manager: Any) -> None:
    """Take the peer's state torchft fetched for this replica now (its async mode applies it
    at commit: too late for this step's plan)."""
    if manager._healing:
        manager._apply_pending_state_dict()
        manager._healing = False


def quorum_members(manager: Any) -> int:
    """Replicas in this replica's last quorum, counting those that heal in it. A step is as
    safe to commit with a member that heals as with one that trains: the replicas that train
    plan the whole global batch among themselves, and the healed one applies their update
    from the state it just took. Counting only those at the newest step would refuse every
    quorum of a replica and one a step behind it, which, with a replica out of phase, can be
    every quorum the Lighthouse forms."""
    return manager._client.members


def healed_in_this_quorum(manager: Any) -> bool:
    """Whether this replica joined its quorum by healing from a peer (see ReplicaClient)."""
    return manager._client.healing


def abort_group(manager: Any) -> None:
    """Close this replica's process group: a collective a peer waits in fails at once."""
    manager._pg.abort()


def shutdown_group(manager: Any) -> None:
    """Free this replica's process group now, not at interpreter teardown."""
    manager._pg.shutdown()
