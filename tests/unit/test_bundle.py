from __future__ import annotations

import io
import tarfile

import pytest

from coordinator import bundle
from coordinator.errors import InvalidSpec


def test_pack_and_unpack_round_trip_skipping_caches(tmp_path):
    src = tmp_path / "src"
    (src / "pkg").mkdir(parents=True)
    (src / "pkg" / "train.py").write_text("print(1)")
    (src / "__pycache__").mkdir()
    (src / "__pycache__" / "x.pyc").write_bytes(b"x")
    data = bundle.pack(src)
    bundle.unpack(data, tmp_path / "dst")
    assert (tmp_path / "dst" / "pkg" / "train.py").read_text() == "print(1)"
    assert not (tmp_path / "dst" / "__pycache__").exists()


def test_patterns_choose_what_ships(tmp_path):
    (tmp_path / "a.py").write_text("a")
    (tmp_path / "big.bin").write_bytes(b"0" * 100)
    bundle.unpack(bundle.pack(tmp_path, ["*.py"]), tmp_path / "out")
    assert (tmp_path / "out" / "a.py").exists() and not (tmp_path / "out" / "big.bin").exists()


def test_a_bundle_cannot_write_outside_its_directory(tmp_path):
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        info = tarfile.TarInfo("../escaped.txt")
        info.size = 2
        tar.addfile(info, io.BytesIO(b"hi"))
    with pytest.raises(InvalidSpec, match="cannot be unpacked"):
        bundle.unpack(buffer.getvalue(), tmp_path / "dst")
    assert not (tmp_path / "escaped.txt").exists()


def test_oversized_workdir_is_refused_with_advice(tmp_path):
    (tmp_path / "data.bin").write_bytes(__import__("os").urandom(4096))
    with pytest.raises(InvalidSpec, match="files"):
        bundle.pack(tmp_path, limit=1024)
