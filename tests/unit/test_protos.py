"""The committed gRPC modules are exactly what protoc makes from the .proto files."""

from __future__ import annotations

import filecmp
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
GENERATED = ROOT / "protos" / "coord" / "v1"


@pytest.mark.skipif(importlib.util.find_spec("grpc_tools") is None, reason="needs grpcio-tools")
def test_generated_modules_are_up_to_date(tmp_path):
    subprocess.run([sys.executable, str(ROOT / "scripts" / "gen_protos.py"), str(tmp_path)],
                   check=True)
    fresh = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*_pb2*.py*"))
    assert fresh, "protoc produced nothing"
    stale = [str(p) for p in fresh if not filecmp.cmp(tmp_path / p, GENERATED / p.name,
                                                        shallow=False)]
    assert not stale, f"run `python scripts/gen_protos.py`: out of date: {stale}"
