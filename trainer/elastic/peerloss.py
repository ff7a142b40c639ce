"""When a collective fails because a peer vanished, exit at once with PEER_LOST_EXIT.

Two reasons. Speed: a gloo or NCCL process group whose peer is gone can take a second or more
to tear down, and the rest of the group is waiting on this rank to exit before it re-forms.
Attribution: the code tells the coordinator that this failure is probably a machine loss, not
a bug in the job, so it waits for its node-loss detection before charging `max_restarts`.
"""

from __future__ import annotations

import os
import sys
import traceback
from types import TracebackType

import torch.distributed as dist

# EX_TEMPFAIL from sysexits.h: "temporary failure, try again later".
PEER_LOST_EXIT = 75
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
        traceback.print_exception(kind, exc, tb)
        print(f"coord: a peer of this rank is gone; exiting with {PEER_LOST_EXIT}",
              file=sys.stderr, flush=True)
        sys.stdout.flush()
        os._exit(PEER_LOST_EXIT)

    sys.excepthook = hook
