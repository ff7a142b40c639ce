"""Two coordd on one PostgreSQL, as two hosts would run them (docs/postgresql.md): each its own
state directory, the CA and the tokens shared (copied from the first)."""

from __future__ import annotations

import shutil
from pathlib import Path

from coordinator import quorum
from coordinator.localcluster import LocalCoordd
from tests.integration.harness import start_coordd, wait_for
from tests.pg import Postgres

SHARED = ["tokens.json", "token", "agent-token", "tls/ca.key", "tls/ca.pem"]


def start_set(tmp_path: Path, postgres: Postgres, pg_url: str,
              lease_s: float = 2.0) -> list[LocalCoordd]:
    """The first started leads; the second is its standby."""
    env = {"COORDD_DATABASE_URL": pg_url, "COORDD_LEASE_S": str(lease_s)}
    first = start_coordd(tmp_path / "host-a", env=env)
    share_credentials(first.state_dir, tmp_path / "host-b")
    second = start_coordd(tmp_path / "host-b", env=env)
    wait_formed(postgres, pg_url)
    return [first, second]


def share_credentials(first: Path, other: Path) -> None:
    """What every coordd of a set shares: the CA and the tokens."""
    (other / "tls").mkdir(parents=True, mode=0o700)
    other.chmod(0o700)
    for name in SHARED:
        shutil.copy2(first / name, other / name)


def wait_formed(postgres: Postgres, pg_url: str) -> None:
    """The leader hands agents the members it saw at its last renewal: one after both
    joined."""
    database = pg_url.rpartition("/")[2]
    wait_for(lambda: postgres.psql(JOINED, database) == "t", 30, what="the set to form")


JOINED = ("SELECT count(*) = 2 AND (SELECT renewed_at FROM leader) > max(seen_at) "
          "FROM members")


def leader(postgres: Postgres, pg_url: str) -> tuple[int, str]:
    """The lease row: epoch and the leader's address."""
    epoch, _, address = postgres.psql("SELECT epoch, address FROM leader",
                                      pg_url.rpartition("/")[2]).partition("|")
    return int(epoch or 0), address


def wait_for_leader(postgres: Postgres, pg_url: str, epoch: int, timeout: float = 20) -> str:
    """The address of the coordd that took the lease at `epoch`."""
    return wait_for(lambda: (seen := leader(postgres, pg_url))[0] >= epoch and seen[1], timeout,
                    what=f"a leader at epoch {epoch}")


def set_client(members: list[LocalCoordd], first: LocalCoordd):
    """An SDK client that knows every member, `first` tried first, and follows the leader."""
    from coordinator.client.sdk import Client
    addresses = [first.address] + [m.address for m in members if m is not first]
    return Client(",".join(addresses), first.token, ca=first.ca_path)


def stop_set(members: list[LocalCoordd]) -> None:
    """Stop every member, and the Lighthouses a killed or stepped-down leader left running
    (on separate hosts they would go with their host)."""
    for member in members:
        member.stop()
        for lease in (member.state_dir / "quorum").glob("*"):
            if found := quorum._read_lease(lease):
                port, pid = found
                quorum._stop_orphan(pid, port)
