"""coord removes only the node folders it made: those carrying its owner mark, named like a
job id, and marked by the coordd that says the job ended."""

from __future__ import annotations

from pathlib import Path

from contract.scratch import Scratch

OURS, OTHER = "c0ffee0000000001", "c0ffee0000000002"


def test_only_marked_job_folders_are_reported_and_removed(tmp_path: Path):
    root, workdir = tmp_path / "shm", tmp_path / "node"
    scratch = Scratch(root, workdir)
    scratch.create("done-0123abcd", "node-a", OURS)
    (scratch.snapshot_dir("done-0123abcd", "node-a") / "step-1").write_text("s")
    scratch.create("theirs-0123abcd", "node-b", OTHER)
    foreign = [root / "coordd-0123456789ab" / "job-1" / "node-c",  # another coordd's root
               root / "user-data", workdir / ".coord-tmp" / "user-tmp", root / ("x" * 200)]
    for path in foreign:
        path.mkdir(parents=True)

    assert scratch.jobs() == ["done-0123abcd", "theirs-0123abcd"]
    assert scratch.jobs(OURS) == ["done-0123abcd"]
    for job_id in ("done-0123abcd", "theirs-0123abcd", "user-data", "user-tmp", "x" * 200,
                   "coordd-0123456789ab"):
        scratch.remove_job(job_id, OURS)  # what a coordd answering "ended" makes an agent do

    assert not (root / "done-0123abcd").exists()
    assert not scratch.tmp_dir("done-0123abcd").exists()
    assert scratch.snapshot_dir("theirs-0123abcd", "node-b").is_dir()
    assert all(path.is_dir() for path in foreign)


def test_the_last_node_leaving_removes_the_job_folder_and_its_mark(tmp_path: Path):
    scratch = Scratch(tmp_path / "shm", tmp_path / "node")
    scratch.create("job-0123abcd", "node-a", OURS)
    scratch.create("job-0123abcd", "node-b", OURS)
    scratch.remove_node("job-0123abcd", "node-a")
    assert scratch.snapshot_dir("job-0123abcd", "node-b").is_dir()
    scratch.remove_node("job-0123abcd", "node-b")
    assert list((tmp_path / "shm").iterdir()) == []
