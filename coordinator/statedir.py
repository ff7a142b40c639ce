"""coordd's state directory holds job data (specs with their environment values, which often
carry secrets, worker logs, bundles, checkpoints) and tokens: only its owner may read it.

coordd creates everything in it with umask 077 and, at every start, takes group and other
permissions off whatever an earlier version, a copy or a hand edit left looser.
"""

from __future__ import annotations

import dataclasses
import os
import stat
from pathlib import Path

UMASK = 0o077
# Certificates are public by nature (clients need the CA); keys and everything else are not.
PUBLIC_FILES = frozenset({Path("tls") / "ca.pem", Path("tls") / "server.pem"})


@dataclasses.dataclass(frozen=True)
class Loosened:
    """A path that was readable (or writable) by others, and what was done about it."""

    path: Path
    old_mode: int
    new_mode: int
    error: str = ""  # why it could not be fixed ("" when fixed)

    def describe(self) -> str:
        old, new = f"{self.old_mode:04o}", f"{self.new_mode:04o}"
        if self.error:
            return f"{self.path} is {old}, open to other users, and could not be fixed: " \
                   f"{self.error}"
        return f"{self.path} was {old}, open to other users: now {new}"


def create(state_dir: Path) -> None:
    """Set this process's umask (everything coordd and the agents it starts create is
    owner-only) and create the state directory, 0700."""
    os.umask(UMASK)
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)


def secure(state_dir: Path) -> list[Loosened]:
    """Take group and other permissions off the directory and everything below it (public
    certificates excepted); symbolic links are not followed."""
    found = [_tighten(state_dir)]
    for root, dirs, files in os.walk(state_dir):
        for name in dirs + files:
            path = Path(root, name)
            if path.relative_to(state_dir) not in PUBLIC_FILES:
                found.append(_tighten(path))
    return [entry for entry in found if entry is not None]


def _tighten(path: Path) -> Loosened | None:
    try:
        info = path.lstat()
    except FileNotFoundError:  # a file that came and went (a worker's temp file)
        return None
    mode = stat.S_IMODE(info.st_mode)
    if stat.S_ISLNK(info.st_mode) or not mode & UMASK:
        return None
    new = mode & ~UMASK
    try:
        path.chmod(new)
    except OSError as exc:
        return Loosened(path, mode, new, exc.strerror or str(exc))
    return Loosened(path, mode, new)
