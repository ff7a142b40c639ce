"""How clients and agents follow the leader of a set of coordd processes (docs/postgresql.md):
shared by the SDK, `coord` and coord-agent, which import nothing of each other.

A standby answers every call with UNAVAILABLE, the error tag NOT_LEADER and the leader's
address in LEADER_KEY; the caller then tries that address, else the next one it was given.
"""

from __future__ import annotations

NOT_LEADER = "NotLeader"
LEADER_KEY = "coord-leader"


def split_addresses(text: str) -> list[str]:
    """`a:7070,b:7070` (spaces allowed) as a list, in order, without repeats or empties."""
    found: list[str] = []
    for part in text.split(","):
        if (address := part.strip()) and address not in found:
            found.append(address)
    return found


def next_address(addresses: list[str], current: str, hint: str = "") -> str:
    """Where to call after `current` failed: the leader a standby named, else the next of
    `addresses` after `current` (round robin)."""
    if hint:
        return hint
    if current not in addresses:
        return addresses[0]
    return addresses[(addresses.index(current) + 1) % len(addresses)]


def leader_hint(trailing_metadata) -> str:
    """The leader's address from a standby's answer; empty when the answer is not one."""
    found = dict(trailing_metadata or ())
    return found.get(LEADER_KEY, "") if found.get("coord-error") == NOT_LEADER else ""
