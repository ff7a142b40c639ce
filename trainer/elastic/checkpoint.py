"""Atomic, generation-fenced checkpoint files.

A checkpoint is one file `ckpt-<step>-g<generation>.pt` made of a magic line, a JSON header
(step, generation, payload length and SHA-256) and the `torch.save` payload. It is written to a
hidden temporary file, fsynced, checked against the FENCE, renamed into place and the directory
fsynced: a reader either sees the whole file or no file. The checksum still guards against a
file system that lies (or a hand-copied, truncated file): a torn file is skipped, never loaded,
and the previous checkpoint is kept until a newer one is durable.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from contract import control

from .errors import CheckpointError
from .fence import ensure_current
from .logs import get_logger

MAGIC = b"COORD-CKPT/1\n"
NAME_RE = re.compile(r"^ckpt-(\d{10})-g(\d+)\.pt$")
TMP_PREFIX = ".tmp-"
STALE_TMP_AGE_S = 3600.0

log = get_logger(__name__)


@dataclass(frozen=True, order=True)
class CheckpointRef:
    """Identifies one committed checkpoint; orders by (step, generation)."""

    step: int
    generation: int
    path: Path


@dataclass(frozen=True)
class Checkpoint:
    """A loaded, verified checkpoint."""

    ref: CheckpointRef
    payload: dict[str, Any]


def checkpoint_name(step: int, generation: int) -> str:
    return f"ckpt-{step:010d}-g{generation}.pt"


class CheckpointStore:
    """Saves and finds checkpoints in one directory shared by all nodes."""

    def __init__(self, directory: Path, generation: int, keep: int = 2, job_id: str = "",
                 report: bool = False) -> None:
        if keep < 1:
            raise ValueError("keep must be >= 1")
        self.directory = Path(directory)
        self.generation = generation
        self.keep = keep
        self.job_id = job_id  # the fence's owner this store commits for ("": any)
        # Tell coord each durable commit (a control line): coordd then knows the job can
        # resume, e.g. after a clean stop that ends its local nodes.
        self.report = report

    def save(self, step: int, payload: dict[str, Any]) -> CheckpointRef:
        """Commit `payload` as the checkpoint of `step`; a generation-checked rename.

        Raises StaleGenerationError (and leaves no file behind) if FENCE > our generation.
        """
        data = _encode(step, self.generation, payload)
        self.directory.mkdir(parents=True, exist_ok=True)
        final = self.directory / checkpoint_name(step, self.generation)
        tmp = self.directory / f"{TMP_PREFIX}{final.name}.{uuid.uuid4().hex}"
        try:
            _write_durably(tmp, data)
            ensure_current(self.directory, self.generation, self.job_id)
            os.replace(tmp, final)
        finally:
            tmp.unlink(missing_ok=True)
        _fsync_dir(self.directory)
        ref = CheckpointRef(step, self.generation, final)
        self._prune(ref)
        if self.report:
            control.emit("checkpoint", step=step)
        return ref

    def refs(self) -> list[CheckpointRef]:
        """Committed checkpoint files by name, oldest first (contents not yet verified)."""
        if not self.directory.is_dir():
            return []
        found = []
        for entry in self.directory.iterdir():
            match = NAME_RE.match(entry.name)
            if match:
                found.append(CheckpointRef(int(match[1]), int(match[2]), entry))
        return sorted(found)

    def load(self, ref: CheckpointRef) -> Checkpoint:
        """Read and verify one checkpoint; CheckpointError if it is torn or unreadable."""
        try:
            raw = ref.path.read_bytes()
        except OSError as exc:
            raise CheckpointError(f"cannot read {ref.path}: {exc}") from exc
        return Checkpoint(ref, _decode(raw, ref))

    def latest(self) -> Checkpoint | None:
        """The newest checkpoint that verifies; torn or partial ones are skipped with a warning."""
        for ref in reversed(self.refs()):
            try:
                return self.load(ref)
            except CheckpointError as exc:
                log.warning("checkpoint_skipped", path=str(ref.path), reason=str(exc))
        return None

    def _prune(self, newest: CheckpointRef) -> None:
        """Keep the newest `keep` checkpoints (the one just made durable among them)."""
        refs = [r for r in self.refs() if r <= newest]
        for old in refs[: max(0, len(refs) - self.keep)]:
            old.path.unlink(missing_ok=True)
        self._remove_stale_tmp()

    def _remove_stale_tmp(self) -> None:
        """Temporary files of writers killed mid-write; old enough that no writer is alive."""
        cutoff = time.time() - STALE_TMP_AGE_S
        for entry in self.directory.glob(f"{TMP_PREFIX}*"):
            try:
                if entry.stat().st_mtime < cutoff:
                    entry.unlink()
            except OSError:
                pass


def _encode(step: int, generation: int, payload: dict[str, Any]) -> bytes:
    buf = io.BytesIO()
    torch.save(payload, buf)
    body = buf.getvalue()
    header = {"step": step, "generation": generation, "length": len(body),
              "sha256": hashlib.sha256(body).hexdigest()}
    return MAGIC + json.dumps(header).encode() + b"\n" + body


def _decode(raw: bytes, ref: CheckpointRef) -> dict[str, Any]:
    if not raw.startswith(MAGIC):
        raise CheckpointError(f"{ref.path.name}: bad magic (not a coord checkpoint or torn)")
    end = raw.find(b"\n", len(MAGIC))
    if end < 0:
        raise CheckpointError(f"{ref.path.name}: torn header")
    try:
        header = json.loads(raw[len(MAGIC):end])
    except ValueError as exc:
        raise CheckpointError(f"{ref.path.name}: unreadable header") from exc
    body = raw[end + 1:]
    if header.get("length") != len(body):
        raise CheckpointError(
            f"{ref.path.name}: torn ({len(body)} of {header.get('length')} bytes)")
    if header.get("sha256") != hashlib.sha256(body).hexdigest():
        raise CheckpointError(f"{ref.path.name}: checksum mismatch")
    if (header.get("step"), header.get("generation")) != (ref.step, ref.generation):
        raise CheckpointError(f"{ref.path.name}: header does not match the file name")
    try:
        return torch.load(io.BytesIO(body), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means "do not load"
        raise CheckpointError(f"{ref.path.name}: cannot unpickle: {exc}") from exc


def _write_durably(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(directory: Path) -> None:
    """Make the rename itself durable (the directory entry), not only the file's data."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
