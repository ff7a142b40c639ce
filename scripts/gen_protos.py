"""Regenerate the gRPC modules under protos/coord/v1 from the .proto files.

The generated modules are committed so that a fresh clone needs no code generation;
tests/unit/test_protos.py fails when they are out of date with the .proto files.
Run: python scripts/gen_protos.py  (needs grpcio-tools, pinned in pyproject's dev extra)
"""

from __future__ import annotations

import sys
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent / "protos"


def generate(out_dir: Path = ROOT) -> None:
    protos = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "coord" / "v1").glob("*.proto"))
    well_known = Path(protoc.__file__).parent / "_proto"
    args = [
        "protoc",
        f"-I{ROOT}",
        f"-I{well_known}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *protos,
    ]
    if protoc.main(args) != 0:
        sys.exit("protoc failed")


if __name__ == "__main__":
    generate(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT)
