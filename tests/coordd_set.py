"""Two coordd on one PostgreSQL, as two hosts would run them (docs/postgresql.md): each its own
state directory, the CA and the tokens shared (copied from the first), each on a fixed port so
that a member started again (as systemd would) keeps the address agents know it by."""

from __future__ import annotations

import contextlib
import shutil
import signal
from pathlib import Path

from coordinator import quorum
from coordinator.localcluster import LocalCoordd
from coordinator.providers.procs import signal_session
from tests import netns, pg
from tests.integration.harness import start_coordd, wait_for
from tests.net import free_port
from tests.pg import Postgres

SHARED = ["tokens.json", "token", "agent-token", "tls/ca.key", "tls/ca.pem"]


def start_set(tmp_path: Path, postgres: Postgres, pg_url: str,
              lease_s: float = 2.0) -> list[LocalCoordd]:
    """The first started leads; the second is its standby."""
    env = {"COORDD_DATABASE_URL": pg_url, "COORDD_LEASE_S": str(lease_s)}
    first = start_coordd(tmp_path / "host-a", env=env, listen=f"127.0.0.1:{free_port()}")
    share_credentials(first.state_dir, tmp_path / "host-b")
    second = start_coordd(tmp_path / "host-b", env=env, listen=f"127.0.0.1:{free_port()}")
    wait_formed(postgres, pg_url)
    return [first, second]


def start_across(tmp_path: Path, host: netns.Host, lease_s: float = 2.0
                 ) -> tuple[Postgres, str, list[LocalCoordd]]:
    """A PostgreSQL here and two coordd on it: the leader on `host` (a network namespace,
    which reaches the database over a link of its own), the standby here. The caller stops
    the members and then the PostgreSQL."""
    postgres = pg.start(listen=f"127.0.0.1,{host.db_outside}",
                        trusted_net=f"{host.db_inside}/32")
    members: list[LocalCoordd] = []
    try:
        url = postgres.new_database()
        env = {"COORDD_LEASE_S": str(lease_s)}
        remote = postgres.url(url.rpartition("/")[2], host=host.db_outside)
        members.append(start_coordd(tmp_path / "host-a", env={**env, "COORDD_DATABASE_URL": remote},
                                    listen=f"{host.inside}:0", prefix=host.command([])))
        share_credentials(members[0].state_dir, tmp_path / "host-b")
        members.append(start_coordd(tmp_path / "host-b", env={**env, "COORDD_DATABASE_URL": url},
                                    listen=f"{host.outside}:0"))
        wait_formed(postgres, url)
    except BaseException:
        stop_set(members)
        postgres.stop()
        raise
    return postgres, url, members


def restart(member: LocalCoordd, pg_url: str, lease_s: float = 2.0) -> LocalCoordd:
    """`member` started again after it died, on its state directory and address."""
    return start_coordd(member.state_dir, listen=member.address,
                        env={"COORDD_DATABASE_URL": pg_url, "COORDD_LEASE_S": str(lease_s)})


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


def lighthouses(member: LocalCoordd) -> dict[str, int]:
    """job id -> pid of each quorum service (Lighthouse) `member` started that still runs."""
    running = {}
    for lease in (member.state_dir / "quorum").glob("*"):
        if (found := quorum._read_lease(lease)) and _is_lighthouse(found[1], found[0]):
            running[lease.name] = found[1]
    return running


def _is_lighthouse(pid: int, port: int) -> bool:
    with contextlib.suppress(OSError):
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        return b"coordinator.quorum" in argv and any(a.endswith(f":{port}".encode())
                                                    for a in argv)
    return False


def stop_set(members: list[LocalCoordd]) -> None:
    """Stop every member. A member's Lighthouses end with it, at the latest when its lease
    runs out (coordinator/quorum.py). The leader stops its local nodes as it stops; a test
    that failed while no member led leaves them to be ended here."""
    for member in members:
        member.stop()
    for pid in _agents_of({m.address for m in members}):
        signal_session(pid, signal.SIGKILL)


def _agents_of(addresses: set[str]) -> list[int]:
    """Agents still running that were told to reach one of `addresses`."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        with contextlib.suppress(OSError):
            argv = cmdline.read_bytes().split(b"\0")
            named = {part.decode(errors="replace") for a in argv for part in a.split(b",")}
            if any(a.endswith(b"coord-agent") for a in argv[:2]) and named & addresses:
                found.append(int(cmdline.parent.name))
    return found
