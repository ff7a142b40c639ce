"""coordd's state directory holds job data (specs with their environment values, which often
carry secrets, worker logs, bundles, checkpoints) and tokens: only its owner may read it.

coordd creates everything in it with umask 077 and, at every start, takes group and other
permissions off what an earlier version, a copy or a hand edit left looser: the directory and
coord's own entries in it, and what lies below one of those only where that one was loose (a
directory only its owner can enter keeps everything below it private). coordd never takes
over a directory that holds files but none of coord's (`--state-dir ~` by mistake).
"""

from __future__ import annotations

import dataclasses
import os
import stat
from pathlib import Path

from contract.errors import StateDirRefused

UMASK = 0o077
# What coordd (and its providers) keep at the top of the state directory.
OWN_DIRS = frozenset({"tls", "bundles", "checkpoints", "nodes", "quorum"})
OWN_FILES = frozenset({"token", "agent-token"})
OWN_PREFIXES = ("coord.db", "coordd", "tokens")  # coord.db-wal, coordd.log, tokens.json
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
    owner-only) and create the state directory, 0700; StateDirRefused for a directory that
    holds files but none of coord's."""
    os.umask(UMASK)
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    names = {entry.name for entry in os.scandir(state_dir)}
    if names and not any(_is_own(name) for name in names):
        raise StateDirRefused(
            f"{state_dir} is not empty and holds nothing of coord's (no coord.db): coordd "
            "keeps job data and tokens in its state directory and makes it owner-only, so it "
            "does not take over a directory in use; give --state-dir (or COORDD_STATE_DIR) a "
            "new or empty directory")


def secure(state_dir: Path) -> list[Loosened]:
    """Take group and other permissions off the directory and coord's entries in it, and
    off what lies below an entry that was loose (public certificates excepted); symbolic
    links are not followed."""
    found = [_tighten(state_dir)]
    for entry in os.scandir(state_dir):
        if _is_own(entry.name):
            found += _secure_tree(Path(entry.path), state_dir)
    return [entry for entry in found if entry is not None]


def _secure_tree(path: Path, state_dir: Path) -> list[Loosened | None]:
    """Tighten `path`; below a directory only when it was open to others."""
    if path.relative_to(state_dir) in PUBLIC_FILES:
        return []
    found = [_tighten(path)]
    if found[0] is None or not path.is_dir() or path.is_symlink():
        return found
    try:
        children = list(path.iterdir())
    except OSError:  # gone meanwhile, or not ours to list: nothing below to tighten
        return found
    for child in children:
        found += _secure_tree(child, state_dir)
    return found


def _is_own(name: str) -> bool:
    return name in OWN_DIRS or name in OWN_FILES or name.startswith(OWN_PREFIXES)


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
