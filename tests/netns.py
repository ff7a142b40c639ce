"""A second "host" for the tests: a network namespace joined to this one by two veth pairs,
one for the database and one for everything else, so that the database alone can be cut off
(its link set down inside the namespace) while agents and clients still reach the host.
Needs root and `ip` (iproute2); the addresses are 10.X.Y.0/30 subnets picked at random."""

from __future__ import annotations

import dataclasses
import os
import random
import subprocess


def _ip(*args: str, netns: str | None = None) -> None:
    prefix = ["ip", "netns", "exec", netns] if netns else []
    subprocess.run([*prefix, "ip", *args], check=True, capture_output=True, timeout=30)


@dataclasses.dataclass
class Host:
    name: str
    outside: str     # this side's address of the general link
    inside: str      # the namespace's address of the general link
    db_outside: str  # this side's address of the database link
    db_inside: str

    def command(self, argv: list[str]) -> list[str]:
        """`argv` run inside the namespace."""
        return ["ip", "netns", "exec", self.name, *argv]

    def cut_database(self) -> None:
        _ip("link", "set", f"{self.name}-db1", "down", netns=self.name)

    def remove(self) -> None:
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True, timeout=30)
        for side in ("-gen0", "-db0"):  # gone with the namespace, normally
            subprocess.run(["ip", "link", "del", self.name + side], capture_output=True,
                           timeout=30)


def available() -> str:
    """Why namespaces cannot be made here, or '' when they can."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if subprocess.run(["ip", "netns", "list"], capture_output=True).returncode != 0:
        return "`ip netns` does not work here (iproute2 missing?)"
    return ""


def make_host() -> Host:
    name = f"ch{os.getpid() % 10000}{random.randrange(100, 999)}"
    second, third = random.randrange(64, 250), random.randrange(0, 63) * 4
    general, database = f"10.{second}.{third}", f"10.{second}.{third + 1}"
    _ip("netns", "add", name)
    host = Host(name, f"{general}.1", f"{general}.2", f"{database}.1", f"{database}.2")
    try:
        for link, net in (("gen", general), ("db", database)):
            _ip("link", "add", f"{name}-{link}0", "type", "veth", "peer", "name",
                f"{name}-{link}1")
            _ip("link", "set", f"{name}-{link}1", "netns", name)
            _ip("addr", "add", f"{net}.1/30", "dev", f"{name}-{link}0")
            _ip("link", "set", f"{name}-{link}0", "up")
            _ip("addr", "add", f"{net}.2/30", "dev", f"{name}-{link}1", netns=name)
            _ip("link", "set", f"{name}-{link}1", "up", netns=name)
        _ip("link", "set", "lo", "up", netns=name)
    except subprocess.CalledProcessError:
        host.remove()
        raise
    return host
