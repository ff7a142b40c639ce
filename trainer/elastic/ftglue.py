"""torchft 0.2.0 as coord uses it: one Manager per worker, and a fix for Lighthouse restarts.

torchft numbers quorums per Lighthouse process, starting again from 1 when it is restarted,
and a replica re-forms its process group only when the quorum id changes. After a restart a
replica could therefore keep a group its peers have left (seen here: its peers wait 10 s in
the rendezvous of the new group, then discard the step). `UniqueQuorumIds` renumbers quorums:
a new number, a hash of (Lighthouse id, members, step at which it formed) that every member
computes alike, whenever (Lighthouse id, members) changes or this replica is behind the
quorum's step (steps were committed without it, so its peers went through another quorum).
"""

from __future__ import annotations

import hashlib
from datetime import timedelta
from typing import Any, Callable

import torch

from .errors import EnvironmentConfigError


class UniqueQuorumIds:
    """Wraps torchft's ManagerClient; only `_quorum` results change."""

    def __init__(self, client: Any) -> None:
        self._client = client
        self._last: tuple | None = None
        self._id = -1

    def _quorum(self, *args: Any, **kwargs: Any) -> Any:
        result = self._client._quorum(*args, **kwargs)
        key = (result.quorum_id, tuple(sorted(result.replica_ids)))
        behind = result.max_step > kwargs.get("step", result.max_step)
        if key != self._last or behind:
            self._last = key
            digest = hashlib.sha256(repr((key, result.max_step)).encode()).digest()
            self._id = int.from_bytes(digest[:7], "big")
        result.quorum_id = self._id
        return result

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)


def make_manager(*, host: str, lighthouse: str, replica_id: str, min_replicas: int,
                 device: torch.device, timeout_s: float, quorum_timeout_s: float,
                 load_state: Callable[[Any], None], state: Callable[[], Any]) -> tuple[Any, Any]:
    """A Manager for a replica group of one process, which hosts that group's store itself.
    Returns (manager, store); keep the store alive as long as the manager."""
    from torch.distributed import TCPStore
    try:
        from torchft import Manager, ProcessGroupGloo, ProcessGroupNCCL
    except ImportError as exc:
        raise EnvironmentConfigError(
            f"in-process mode needs torchft on this node ({exc}): pip install 'coord[train]', "
            "or set [fault_tolerance] mode = \"restart\" in the job file") from exc

    timeout = timedelta(seconds=timeout_s)
    store = TCPStore(host, 0, is_master=True, wait_for_workers=False)
    pg = ProcessGroupNCCL(timeout=timeout) if device.type == "cuda" else \
        ProcessGroupGloo(timeout=timeout)
    manager = Manager(pg=pg, load_state_dict=load_state, state_dict=state,
                      min_replica_size=min_replicas, use_async_quorum=False, timeout=timeout,
                      quorum_timeout=timedelta(seconds=quorum_timeout_s),
                      connect_timeout=timedelta(seconds=10), rank=0, world_size=1,
                      store_addr=host, store_port=store.port, lighthouse_addr=lighthouse,
                      hostname=host, replica_id=replica_id)
    manager._client = UniqueQuorumIds(manager._client)
    return manager, store

