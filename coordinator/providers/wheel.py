"""A wheel of the coord that this coordd runs, to install on hosts it bootstraps.

Built in memory from the imported packages and the installed distribution's metadata: the
same for an editable checkout and an installed coord, no build tool needed, and a host runs
exactly the code its coordinator runs. The content digest goes into the version (a local
label), so pip reinstalls whenever the code changed and never when it did not.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import importlib
import importlib.metadata
import io
import re
import zipfile
from pathlib import Path

DISTRIBUTION = "coord"
PACKAGES = ("contract", "coordinator", "agent", "trainer", "coord")
SKIP_DIRS = {"__pycache__"}
SKIP_SUFFIXES = {".pyc", ".pyo"}


@dataclasses.dataclass(frozen=True)
class Wheel:
    filename: str
    data: bytes
    digest: str  # of the packaged files: names the build


def build() -> Wheel:
    files = sorted(_package_files())
    content = hashlib.sha256()
    for name, data in files:
        content.update(name.encode() + b"\0" + hashlib.sha256(data).digest())
    digest = content.hexdigest()[:16]
    dist = importlib.metadata.distribution(DISTRIBUTION)
    version = f"{dist.version.split('+')[0]}+{digest}"
    info = f"{DISTRIBUTION}-{version}.dist-info"
    files += [(f"{info}/METADATA", _metadata(dist, version).encode()),
              (f"{info}/WHEEL", b"Wheel-Version: 1.0\nGenerator: coord\nRoot-Is-Purelib: true\n"
                                b"Tag: py3-none-any\n"),
              (f"{info}/entry_points.txt", (dist.read_text("entry_points.txt") or "").encode())]
    return Wheel(f"{DISTRIBUTION}-{version}-py3-none-any.whl", _zip(files, f"{info}/RECORD"),
                 digest)


def _package_files():
    for package in PACKAGES:
        root = Path(importlib.import_module(package).__path__[0])
        for path in root.rglob("*"):
            if path.is_file() and path.suffix not in SKIP_SUFFIXES and \
                    not SKIP_DIRS.intersection(path.relative_to(root).parts):
                yield f"{package}/{path.relative_to(root).as_posix()}", path.read_bytes()


def _metadata(dist: importlib.metadata.Distribution, version: str) -> str:
    """Name, version and the runtime requirements (extras are for other uses: left out)."""
    lines = ["Metadata-Version: 2.1", f"Name: {DISTRIBUTION}", f"Version: {version}"]
    if python := dist.metadata.get("Requires-Python"):
        lines.append(f"Requires-Python: {python}")
    lines += [f"Requires-Dist: {req}" for req in dist.requires or []
              if not re.search(r"\bextra\s*==", req)]
    return "\n".join(lines) + "\n"


def _zip(files: list[tuple[str, bytes]], record_name: str) -> bytes:
    buffer = io.BytesIO()
    record = []
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in files:
            archive.writestr(name, data)
            hashed = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=")
            record.append(f"{name},sha256={hashed.decode()},{len(data)}")
        record.append(f"{record_name},,")
        archive.writestr(record_name, "\n".join(record) + "\n")
    return buffer.getvalue()
