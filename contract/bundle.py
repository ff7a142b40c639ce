"""A job's working directory as a tar.gz: packed by the client, unpacked by each agent.

Unpacking uses tarfile's "data" filter, so a bundle cannot write outside its directory
(no absolute paths, no `..`, no links that escape, no device files), and makes every file
owner-only: a job's files may hold its secrets.
"""

from __future__ import annotations

import fnmatch
import hashlib
import io
import tarfile
from pathlib import Path

from contract.errors import InvalidSpec

MAX_BUNDLE_BYTES = 64 * 1024 * 1024
EXCLUDED_DIRS = frozenset({".git", "__pycache__", ".venv", "venv", ".mypy_cache", ".pytest_cache",
                           "node_modules", ".ruff_cache"})


PATTERN_HELP = ("a pattern is a path relative to the job file's folder ('train.py', "
                "'./train.py'), a folder ('data' or 'data/': everything in it) or a glob "
                "('*.py', 'data/*.csv', '**/*.py': '**/' matches no folder too)")


def _variants(root: Path, pattern: str) -> set[str]:
    """The fnmatch patterns `pattern` stands for: without a leading './', a folder as
    everything in it, and each '**/' also as nothing (a file at that level)."""
    while pattern.startswith("./"):
        pattern = pattern[2:]
    if pattern in ("", "."):
        return {"*"}
    if pattern.endswith("/") or (root / pattern).is_dir():
        pattern = pattern.rstrip("/") + "/**"
    parts = pattern.split("**/")
    found = {parts[0]}
    for part in parts[1:]:
        found = {head + glue + part for head in found for glue in ("**/", "")}
    return found


def _selected(root: Path, patterns: list[str]) -> list[Path]:
    chosen, matched = [], set()
    wanted = {p: _variants(root, p) for p in patterns}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if any(part in EXCLUDED_DIRS for part in rel.parts) or not path.is_file():
            continue
        hits = {p for p, forms in wanted.items()
                if any(fnmatch.fnmatch(rel.as_posix(), form) for form in forms)}
        if patterns and not hits:
            continue
        matched |= hits
        chosen.append(path)
    # A pattern that matches nothing is a typo or a missing file: the job would fail on its
    # nodes later, so it is refused here, at submit.
    if missing := [p for p in patterns if p not in matched]:
        raise InvalidSpec(f"files: {', '.join(repr(p) for p in missing)} match no file under "
                          f"{root}; {PATTERN_HELP}")
    return chosen


def pack(root: str | Path, patterns: list[str] | None = None,
         limit: int = MAX_BUNDLE_BYTES) -> bytes:
    """tar.gz of the files under `root` that match `patterns` (all files when empty)."""
    root = Path(root)
    if not root.is_dir():
        raise InvalidSpec(f"workdir {root}: not a directory")
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for path in _selected(root, patterns or []):
            tar.add(path, arcname=path.relative_to(root).as_posix(), recursive=False)
            _check_size(buffer.tell(), limit, root)  # gzip buffers: a cheap early stop
    _check_size(buffer.tell(), limit, root)
    return buffer.getvalue()


def _check_size(size: int, limit: int, root: Path) -> None:
    if size > limit:
        raise InvalidSpec(f"workdir {root}: bundle is over {limit / 2**20:.3g} MiB compressed; "
                          "list what to ship in `files`, or keep data out of the workdir")


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _owner_only(member: tarfile.TarInfo, dest: str) -> tarfile.TarInfo:
    member = tarfile.data_filter(member, dest)
    return member if member.mode is None else member.replace(mode=member.mode & 0o700,
                                                             deep=False)


def unpack(data: bytes, dest: Path) -> None:
    """Extract into `dest`, refusing members that would land outside it."""
    dest.mkdir(parents=True, exist_ok=True)
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
            tar.extractall(dest, filter=_owner_only)
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise InvalidSpec(f"bundle cannot be unpacked: {exc}") from None
