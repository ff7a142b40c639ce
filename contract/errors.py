"""One error hierarchy for coord, mapped to gRPC status codes at the service edge.

Raise these anywhere in the daemon; `coordinator.server` turns them into status codes in
one place, and the SDK turns status codes back into the same classes for clients.
"""

from __future__ import annotations

import grpc


class CoordError(Exception):
    """Base of every error coord raises on purpose."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL
    retryable: bool = False


class InvalidSpec(CoordError):
    """A job spec or request field is wrong; retrying the same input never helps."""

    code = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(CoordError):
    code = grpc.StatusCode.NOT_FOUND


class Conflict(CoordError):
    """The object is not in a state that allows the operation (e.g. cancel a finished job)."""

    code = grpc.StatusCode.FAILED_PRECONDITION


class Unauthenticated(CoordError):
    code = grpc.StatusCode.UNAUTHENTICATED


class AlreadyRunning(Conflict):
    """Another coordd holds the state directory."""


class StateDirRefused(CoordError):
    """The state directory given is not coordd's to take over (it holds other files)."""


class PermissionDenied(CoordError):
    code = grpc.StatusCode.PERMISSION_DENIED


class PathDenied(PermissionDenied):
    """A path on a node that its user may not read or write: fix the path."""


class ResourceExhausted(CoordError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class Unavailable(CoordError):
    """A dependency (a provider, a host) cannot be reached now; try again later."""

    code = grpc.StatusCode.UNAVAILABLE
    retryable = True


class CoorddUnreachable(Unavailable):
    """The client cannot reach coordd itself (or has no address for one)."""


class NotLeader(Unavailable):
    """This coordd is a standby: the leader of its set (docs/postgresql.md) acts."""


class Fenced(CoordError):
    """A write of a coordd that is no longer the leader: another took over (a newer epoch)."""


class ProviderError(CoordError):
    """A provider could not make or remove a node."""

    code = grpc.StatusCode.UNAVAILABLE
    retryable = True


class BadEvent(CoordError):
    """A stored job event whose payload does not fit its kind's model (contract/events.py)."""


class PartialLaunch(ProviderError):
    """`Provider.launch` brought up some of the nodes: those named in `failed` could not be
    launched (lose them now), every other record was launched and is kept."""

    def __init__(self, failed: list[str], message: str):
        super().__init__(message)
        self.failed = list(failed)
        self.launched: list = []  # the registry's views of the kept nodes, filled by it


_BY_CODE = {
    cls.code: cls
    for cls in (InvalidSpec, NotFound, Conflict, Unauthenticated, PermissionDenied,
                ResourceExhausted, Unavailable)
}
# Trailing metadata naming the class of an error coordd raised itself (coordinator/edge.py):
# a status without it comes from gRPC (coordd unreachable) or an interceptor (a token refused).
ERROR_KEY = "coord-error"
_BY_NAME = {cls.__name__: cls for cls in (
    InvalidSpec, NotFound, Conflict, AlreadyRunning, Unauthenticated, PermissionDenied,
    PathDenied, ResourceExhausted, Unavailable, NotLeader, ProviderError)}


def error_tag(exc: CoordError) -> str:
    """The name of the nearest class of `exc` that clients know."""
    return next((cls.__name__ for cls in type(exc).__mro__ if cls.__name__ in _BY_NAME),
                "CoordError")


def from_status(code: grpc.StatusCode, details: str, tag: str = "") -> CoordError:
    """The client-side mirror of the server mapping: by the class coordd named, else by code."""
    cls = _BY_NAME.get(tag) or _BY_CODE.get(code, CoordError)
    return cls(details or code.name)


# What `coord` exits with, in one table (docs/cli.md shows the same). 0, 1 and 3 are a followed
# job's end (SUCCEEDED, FAILED, CANCELLED) and 130 an interrupt; every error is one of these.
EXIT_BAD_INPUT = 2
EXIT_UNREACHABLE = 4
EXIT_CODES: dict[type[CoordError], int] = {
    InvalidSpec: EXIT_BAD_INPUT,         # the job file, a flag, a path: fix the input
    NotFound: EXIT_BAD_INPUT,            # no such job or node
    PathDenied: EXIT_BAD_INPUT,          # a path on a node its user may not use
    CoorddUnreachable: EXIT_UNREACHABLE,  # coordd cannot be reached
    Unauthenticated: EXIT_UNREACHABLE,   # coordd refused the token
    PermissionDenied: EXIT_UNREACHABLE,  # coordd refused this token (or the provider coordd)
    Conflict: 5,                         # not in this state: the job already ended, node gone
    ResourceExhausted: 6,                # a limit was reached: a node's disk, a quota
    CoordError: 7,                       # anything else coordd reports (an internal error)
    Unavailable: 8,                      # coordd answered: a host or provider it needs did not
    ProviderError: 8,                    # a provider could not make, reach or remove a node
}


def exit_code(exc: CoordError) -> int:
    """The exit code of the closest class in EXIT_CODES."""
    return next(EXIT_CODES[cls] for cls in type(exc).__mro__ if cls in EXIT_CODES)
