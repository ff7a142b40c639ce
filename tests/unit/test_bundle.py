from __future__ import annotations

import io
import tarfile

import pytest

from contract import bundle
from contract.errors import InvalidSpec


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


@pytest.mark.parametrize("patterns, shipped", [
    (["./train.py"], ["train.py"]),
    (["data"], ["data/a.csv", "data/sub/b.csv"]),
    (["data/"], ["data/a.csv", "data/sub/b.csv"]),
    (["**/*.py"], ["pkg/mod.py", "train.py"]),
    (["pkg/**/*.py"], ["pkg/mod.py"]),
])
def test_files_patterns_people_write_select_what_they_mean(tmp_path, patterns, shipped):
    for rel in ("train.py", "pkg/mod.py", "data/a.csv", "data/sub/b.csv", "notes.txt"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(rel)
    with tarfile.open(fileobj=io.BytesIO(bundle.pack(tmp_path, patterns)), mode="r:gz") as tar:
        assert sorted(tar.getnames()) == shipped


def test_a_pattern_matching_nothing_is_refused_saying_what_is_accepted(tmp_path):
    (tmp_path / "train.py").write_text("")
    with pytest.raises(InvalidSpec, match=r"'data/' match no file .*a folder \('data' or"):
        bundle.pack(tmp_path, ["train.py", "data/"])
