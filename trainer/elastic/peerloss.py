"""When a collective fails because a peer vanished, exit at once with PEER_LOST_EXIT.

Two reasons. Speed: a gloo or NCCL process group whose peer is gone can take a second or more
to tear down, and the rest of the group is waiting on this rank to exit before it re-forms.
Attribution: the code tells the coordinator that this failure is probably a machine loss, not
a bug in the job, so it waits for its node-loss detection before charging `max_restarts`.
"""

from __future__ import annotations

import os
import sys
from types import TracebackType

import torch.distributed as dist

from contract.exits import PEER_LOST_EXIT

PEER_LOST = "a peer replica was lost"
_SIGNS = ("Connection closed by peer", "Connection reset by peer", "Broken pipe",
          "NCCL communicator was aborted", "remote process exited", "ProcessGroupGloo")


def is_peer_loss(exc: BaseException) -> bool:
    if isinstance(exc, getattr(dist, "DistNetworkError", ())):
        return True
    return isinstance(exc, RuntimeError) and any(sign in str(exc) for sign in _SIGNS)


def install() -> None:
    """Chain onto sys.excepthook: peer losses exit fast, everything else is left as it was."""
    previous = sys.excepthook

    def hook(kind: type[BaseException], exc: BaseException, tb: TracebackType | None) -> None:
        if not is_peer_loss(exc):
            previous(kind, exc, tb)
            return
        print(f"coord: a peer of this rank is gone ({first_line(exc)}); exiting with "
              f"{PEER_LOST_EXIT} so that the group re-forms", file=sys.stderr, flush=True)
        sys.stdout.flush()
        os._exit(PEER_LOST_EXIT)

    sys.excepthook = hook


def first_line(exc: BaseException) -> str:
    """An error's first line, short: gloo's messages run on with advice and emoji."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text[:160]


def discard_reason(error: BaseException | None) -> str:
    """Why a replica's step was not committed, in a few words (torchft's `errored()`)."""
    cause = getattr(error, "original_exception", error)
    if cause is None:
        return "a replica did not commit"
    if is_peer_loss(cause):
        return PEER_LOST
    return f"{type(cause).__name__}: {first_line(cause)}"


def reform_cause(old_size: int, new_size: int, lost_peer: bool) -> str:
    """Why the replicas re-formed: the one line a person sees of a handled peer loss."""
    if lost_peer:
        return PEER_LOST
    return "replicas joined" if new_size > old_size else "a peer replica left or was lost"
