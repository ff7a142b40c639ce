"""`coord` and the SDK against a real coordd: exit codes, overrides, output a script can read,
node ids, a local node's agent as `ps` shows it, and the README's SDK example as written."""

from __future__ import annotations

import json
import re
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from typer.testing import CliRunner

from contract.states import JobState
from coordinator.client.cli import app
from coordinator.store import JobRecord
from tests.integration.harness import ROOT, start_coordd, wait_for


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    coordd = start_coordd(tmp_path_factory.mktemp("cli") / "state", "--heartbeat-timeout", "3")
    yield coordd
    coordd.stop()


def coord(server, *args: str, env: dict[str, str] | None = None):
    return CliRunner().invoke(app, list(args), env={**server.env, **(env or {})})


def job_file(directory: Path, name: str, run: str, extra: str = "") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "job.toml"
    path.write_text(f'name = "{name}"\nrun = "{run}"\n{extra}\n[nodes]\ncount = 2\n')
    return path


@pytest.mark.timeout(120)
def test_overrides_outputs_and_exit_codes_of_a_finished_job(server, tmp_path):
    path = job_file(tmp_path / "q", "from-file", "echo K=$K")
    result = coord(server, "submit", str(path), "--detach", "--nodes", "1", "--name", "quick",
                   "--env", "K=v1")
    assert result.exit_code == 0, result.output
    job_id = result.stdout.strip()  # --detach: the id alone on stdout, the hints on stderr
    assert re.fullmatch(r"[a-z0-9-]+", job_id) and f"coord logs {job_id}" in result.stderr
    with server.client() as client:
        assert client.wait(job_id, timeout=60).state is JobState.SUCCEEDED
        assert [l.text for l in client.logs(job_id)] == ["K=v1"]
    detail = coord(server, "status", "quick")
    assert "overrides: --nodes 1 --name quick --env K" in detail.output
    record = json.loads(coord(server, "status", job_id, "-o", "json").output)
    assert record["state"] == "SUCCEEDED" and record["overrides"] == [
        "--nodes 1", "--name quick", "--env K"]
    assert json.loads(record["spec_json"])["nodes"]["count"] == 1
    assert json.loads(record["spec_json"])["env"] == {"K": "***"}  # values may be secrets
    assert "v1" not in coord(server, "jobs", "--all", "-o", "json").output
    cancel = coord(server, "cancel", job_id)  # already ended: not "coordd unreachable"
    assert cancel.exit_code == 5 and "already ended: SUCCEEDED" in cancel.output
    assert job_id not in coord(server, "jobs").output  # active jobs only, as squeue
    listing = coord(server, "jobs", "--all", "--fields", "id,state,nodes").output.splitlines()
    assert listing[0].split() == ["ID", "STATE", "NODES"]
    assert [job_id, "SUCCEEDED"] in [line.split()[:2] for line in listing]
    nodes = json.loads(coord(server, "nodes", "--all", "-o", "json").output)
    assert [n["id"].startswith("node-quick-") for n in nodes if n["job_id"] == job_id] == [True]


def test_jobs_all_shows_an_active_job_older_than_the_newest_hundred(server, tmp_path):
    path = job_file(tmp_path / "old", "old-active", "sleep 120")
    old = coord(server, "submit", str(path), "--detach").stdout.strip()
    try:
        with sqlite3.connect(server.state_dir / "coord.db") as db:  # 100 newer, ended jobs
            rows = [JobRecord(id=f"ended-{i:08x}", name="ended", spec_json="{}",
                              state=JobState.SUCCEEDED).to_row() for i in range(100)]
            db.executemany(f"insert into jobs ({', '.join(rows[0])}) values "
                           f"({', '.join('?' * len(rows[0]))})", [tuple(r.values()) for r in rows])
        listed = [j["id"] for j in json.loads(coord(server, "jobs", "--all", "-o", "json",
                                                   "--fields", "id").output)]
        assert old in listed and {r["id"] for r in rows} <= set(listed)
    finally:
        coord(server, "cancel", old)


def test_status_and_the_sdk_read_past_events_of_another_coordd_version(server):
    """Rows a newer coordd (or a hand) wrote: an extra key, a kind this one does not know, a
    wrong type, no JSON. `coord status` names the unreadable ones and shows the rest."""
    job = JobRecord(id="other-00000001", name="other", spec_json="{}",
                    state=JobState.SUCCEEDED, generation=2)
    rows = [("generation.started", '{"cause": "start", "new_members": ["n-1"], "later": 1}'),
            ("quota.exceeded", '{"limit": 3}'),
            ("generation.reformed", '{"cause": "node_lost", "new_members": "n-1"}'),
            ("quorum.died", "not json")]
    with sqlite3.connect(server.state_dir / "coord.db") as db:
        row = job.to_row()
        db.execute(f"insert into jobs ({', '.join(row)}) values ({', '.join('?' * len(row))})",
                   tuple(row.values()))
        db.executemany("insert into events (job_id, time, kind, generation, message, data_json)"
                       " values (?, 1.0, ?, 1, 'said', ?)", [(job.id, *r) for r in rows])
    detail = coord(server, "status", job.id)
    assert detail.exit_code == 0, detail.output
    assert "restart  start" in detail.output
    unreadable = [line.split(":", 1)[1] for line in detail.output.splitlines()
                  if "unreadable" in line]
    assert unreadable == [" event 'generation.reformed': field 'new_members': Input should be "
                          "a valid list (got 'n-1')", " event 'quorum.died': its data is not "
                          "JSON (Expecting value: line 1 column 1 (char 0))"]
    printed = json.loads(coord(server, "status", job.id, "-o", "json").output)["events"]
    assert [e["data"] for e in printed] == [
        {"cause": "start", "new_members": ["n-1"], "later": 1}, {"limit": 3},
        {"cause": "node_lost", "new_members": "n-1"}, {}]
    with server.client() as client:
        assert [r.cause for r in client.reformations(job.id)] == ["start"]


async def test_coordd_records_only_the_shape_of_override_flags(server, tmp_path):
    """A client (not ours) sending a value with --env, or anything else, is refused."""
    from contract.errors import InvalidSpec
    from coord.v1 import jobs_pb2
    from coordinator.client.sdk import AsyncClient
    spec = '{"name": "raw", "run": "true"}'
    async with AsyncClient(server.address, server.token, ca=server.ca_path) as client:
        for flags in (["--env TOKEN=secret"], ["rm -rf /"], ["--nodes 1"] * 300):
            with pytest.raises(InvalidSpec, match="field 'overrides'"):
                await client._call("SubmitJob", jobs_pb2.SubmitJobRequest(
                    spec_json=spec, source="raw", dry_run=True, overrides=flags))


@pytest.mark.timeout(120)
def test_bad_input_is_2_and_a_refused_token_is_4(server, tmp_path):
    path = job_file(tmp_path / "g", "globs", "true", 'files = ["*.py", "data/*.csv"]')
    (path.parent / "train.py").write_text("")
    refused = coord(server, "submit", str(path))
    assert refused.exit_code == 2 and "files: 'data/*.csv' match no file" in refused.output
    bad_nodes = coord(server, "submit", str(path), "--nodes", "0")
    assert bad_nodes.exit_code == 2 and "--nodes (key 'nodes.count')" in bad_nodes.output
    assert coord(server, "status", "no-such-job").exit_code == 2
    wrong = coord(server, "jobs", env={"COORD_TOKEN": "not-the-token"})
    assert wrong.exit_code == 4 and "wrong token" in wrong.output


@pytest.mark.timeout(150)
def test_a_followed_job_exits_with_its_state_and_ps_shows_coord_agent(server, tmp_path):
    failing = job_file(tmp_path / "f", "fails", "exit 3")
    assert coord(server, "submit", str(failing), "-N", "1").exit_code == 1
    sleeper = job_file(tmp_path / "s", "sleeper", "sleep 60")
    follow = subprocess.Popen([sys.executable, "-m", "coordinator.client.cli", "submit", str(sleeper),
                               "-N", "1"], env=server.env, stdout=subprocess.PIPE, text=True)
    with server.client() as client:
        job = wait_for(lambda: next((j for j in client.jobs(include_finished=False)
                                     if j.name == "sleeper" and j.state is JobState.RUNNING),
                                    None), 60, what="the sleeper to run")
        [node] = job.node_ids
        agent = server.node_pid(node)
        assert Path(f"/proc/{agent}/comm").read_text().strip() == "coord-agent"
        assert b"coord-agent" in Path(f"/proc/{agent}/cmdline").read_bytes()
        assert coord(server, "cancel", job.id).exit_code == 0
    assert follow.wait(60) == 3, follow.stdout.read()


def readme_sdk_example() -> str:
    """The code block after the README's `sdk-example` marker."""
    text = (ROOT / "README.md").read_text()
    block = re.search(r"<!-- sdk-example.*?-->\s*```python\n(.*?)```", text, re.S)
    assert block, "README.md has no sdk-example block"
    return block[1]


@pytest.mark.slow
@pytest.mark.timeout(150)
def test_the_readme_sdk_example_prints_what_the_readme_says(server):
    code = readme_sdk_example()
    promised = [re.escape(p).replace(r"\.\.\.", ".*")
                for p in re.findall(r"# prints: (.*)$", code, re.M)]
    assert len(promised) == 2, code
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT,
                            env=server.env, capture_output=True, text=True, timeout=140)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert any(re.fullmatch(promised[0], line) for line in lines), (promised[0], lines)
    assert re.fullmatch(promised[1], lines[-1]), lines
