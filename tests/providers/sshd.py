"""A real OpenSSH server on a loopback port for the ssh provider's tests: its own host key,
a generated user key in its AuthorizedKeysFile, and a known_hosts file that trusts it.
Needs Debian's openssh-server (scripts/setup.sh installs it) and root (it logs in as root)."""

from __future__ import annotations

import dataclasses
import os
import shutil
import socket
import subprocess
import textwrap
import time
from pathlib import Path

import pytest

from tests.net import free_port

SSHD = Path("/usr/sbin/sshd")


@dataclasses.dataclass
class Sshd:
    port: int
    user: str
    key: Path          # in authorized_keys
    stranger_key: Path  # a valid key the server does not know
    known_hosts: Path
    process: subprocess.Popen

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def keygen(path: Path) -> Path:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", path.name, "-f",
                    str(path)], check=True)
    return path


def start_sshd(root: Path, extra_config: str = "") -> Sshd:
    """`extra_config`: more sshd_config lines (e.g. SetEnv)."""
    if not SSHD.exists() or os.geteuid() != 0:
        pytest.fail(f"these tests need {SSHD} (scripts/setup.sh installs openssh-server) and "
                    "root")
    root.mkdir(parents=True, exist_ok=True)
    host_key, user_key = keygen(root / "host_key"), keygen(root / "user_key")
    stranger = keygen(root / "stranger_key")
    shutil.copy(root / "user_key.pub", root / "authorized_keys")
    port = free_port()
    key_type, key_data = (root / "host_key.pub").read_text().split()[:2]
    (root / "known_hosts").write_text(f"[127.0.0.1]:{port} {key_type} {key_data}\n")
    config = root / "sshd_config"
    config.write_text(textwrap.dedent(f"""
        ListenAddress 127.0.0.1
        Port {port}
        HostKey {host_key}
        PidFile {root / 'sshd.pid'}
        AuthorizedKeysFile {root / 'authorized_keys'}
        PermitRootLogin prohibit-password
        PasswordAuthentication no
        KbdInteractiveAuthentication no
        UsePAM no
        StrictModes no
        MaxStartups 64
        MaxSessions 64
        Subsystem sftp internal-sftp
    """) + extra_config)
    Path("/run/sshd").mkdir(exist_ok=True)  # its privilege separation directory
    with open(root / "sshd.log", "ab") as log:
        process = subprocess.Popen([str(SSHD), "-D", "-e", "-f", str(config)], stdout=log,
                                   stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"sshd exited: {(root / 'sshd.log').read_text()[-2000:]}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return Sshd(port, "root", user_key, stranger, root / "known_hosts", process)
        except OSError:
            time.sleep(0.05)
    process.kill()
    pytest.fail("sshd did not listen within 10 s")
