"""The client side's pure parts: exit codes, output, overrides, file globs, the SDK's types,
node ids and what a person sees when coordd is not there."""

from __future__ import annotations

import json
import re
import sys

import click
import pytest
from typer.testing import CliRunner

from contract import bundle, errors
from contract.spec import Overrides, load_job_file, parse_env_flags
from contract.states import JobState, NodeState
from coord.v1 import types_pb2
from coordinator.client import cliout
from coordinator.client.cli import app
from coordinator.client.sdk import AsyncClient
from coordinator.client.sdktypes import Job, JobEvent, LogLine, Node
from coordinator.nodes import node_id
from coordinator.providers.local import agent_command
from tests.integration.harness import ROOT
from tests.net import free_port

DOCUMENTED = {errors.InvalidSpec: 2, errors.NotFound: 2, errors.PathDenied: 2,
              errors.CoorddUnreachable: 4, errors.Unauthenticated: 4,
              errors.PermissionDenied: 4, errors.Conflict: 5, errors.ResourceExhausted: 6,
              errors.CoordError: 7, errors.Unavailable: 8, errors.ProviderError: 8}


@pytest.mark.parametrize("cls", list(DOCUMENTED), ids=lambda c: c.__name__)
def test_every_error_exits_with_its_documented_code(cls):
    assert errors.exit_code(cls("x")) == DOCUMENTED[cls]
    docs = (ROOT / "docs" / "cli.md").read_text()
    assert re.search(rf"^\| `{DOCUMENTED[cls]}` \|.*`{cls.__name__}`", docs, re.M), \
        f"docs/cli.md does not list {cls.__name__} under exit code {DOCUMENTED[cls]}"


def test_cancelling_a_finished_job_is_not_the_unreachable_code():
    assert errors.exit_code(errors.from_status(errors.Conflict.code, "already ended")) == 5


@pytest.mark.parametrize("error", [errors.ProviderError("ssh host a: unreachable"),
                                   errors.PathDenied("node n: /x: permission denied")],
                         ids=lambda e: type(e).__name__)
def test_errors_coordd_raises_keep_their_class_whatever_their_code(error):
    back = errors.from_status(error.code, str(error), errors.error_tag(error))
    assert type(back) is type(error)
    assert errors.exit_code(back) not in (errors.EXIT_UNREACHABLE, 7)


def test_sdk_types_carry_enum_names_not_numbers():
    job = Job.from_proto(types_pb2.Job(id="a-1", state=types_pb2.JOB_STATE_SUCCEEDED))
    assert job.state is JobState.SUCCEEDED and str(job.state) == "SUCCEEDED" and job.terminal
    node = Node.from_proto(types_pb2.Node(id="n", state=types_pb2.NODE_STATE_LOST))
    assert f"{node.state}" == "LOST" and node.state is NodeState.LOST
    line = LogLine.from_proto(types_pb2.LogLine(stream=types_pb2.LOG_STREAM_STDERR, text="x"))
    assert str(line.stream) == "STDERR"
    event = JobEvent.from_proto(types_pb2.JobEvent(kind="generation.started",
                                                   data_json='{"cause": "node_lost"}'))
    assert event.data["cause"] == "node_lost"


@pytest.mark.parametrize("value", [0, 99])
def test_a_state_this_client_does_not_know_is_unknown_not_a_crash(value):
    assert Job.from_proto(types_pb2.Job(id="a-1", state=value)).state is JobState.UNKNOWN
    assert Node.from_proto(types_pb2.Node(id="n", state=value)).state is NodeState.UNKNOWN
    assert str(LogLine.from_proto(types_pb2.LogLine(stream=99)).stream) == "UNKNOWN"


def test_json_output_masks_job_env_values():
    spec = '{"name": "j", "env": {"API_KEY": "s3cret", "K": "v"}, "nodes": {"count": 2}}'
    job = Job.from_proto(types_pb2.Job(id="j-1", state=3, spec_json=spec))
    text = cliout.as_json([job], cliout.JOB_FIELDS, None)
    assert "s3cret" not in text
    shown = json.loads(json.loads(text)[0]["spec_json"])
    assert shown["env"] == {"API_KEY": "***", "K": "***"} and shown["nodes"]["count"] == 2


def test_tables_print_ids_whole_however_long():
    long_id = "an-unusually-long-job-name-for-a-narrow-terminal-0123456789-1a2b3c4d"
    job = Job.from_proto(types_pb2.Job(id=long_id, name="n" * 50, state=3,
                                       node_ids=["node-x-1", "node-x-2"], reason="r" * 200))
    text = click.unstyle(cliout.table([job], cliout.JOB_FIELDS, cliout.JOB_DEFAULT))
    assert long_id in text and "…" not in text
    header, row = text.splitlines()
    assert header.split() == ["ID", "NAME", "STATE", "GEN", "NODES", "CREATED", "REASON"]
    assert row.split()[2:5] == ["RUNNING", "0", "2"]


def test_fields_choose_columns_and_an_unknown_field_is_named():
    assert cliout.pick_fields("id,state,nodes", cliout.JOB_FIELDS, []) == ["id", "state", "nodes"]
    with pytest.raises(errors.InvalidSpec, match="unknown field colour; known: id,"):
        cliout.pick_fields("id,colour", cliout.JOB_FIELDS, [])


def write_job(tmp_path, body: str = ""):
    path = tmp_path / "job.toml"
    path.write_text('name = "j"\nrun = "true"\n[nodes]\ncount = 2\nmin = 2\n' + body)
    return path


def test_overrides_are_validated_like_the_file_and_name_the_flag(tmp_path):
    job = write_job(tmp_path)
    spec = load_job_file(job, Overrides(nodes=2, name="x", env={"LR": "0.1"}))
    assert (spec.nodes.count, spec.name, spec.env) == (2, "x", {"LR": "0.1"})
    with pytest.raises(errors.InvalidSpec, match=r"--nodes \(key 'nodes.count'\): .*got 0"):
        load_job_file(job, Overrides(nodes=0))
    with pytest.raises(errors.InvalidSpec, match=r"--nodes \(key 'nodes'\): .*min \(2\) must not"):
        load_job_file(job, Overrides(nodes=1))
    with pytest.raises(errors.InvalidSpec, match=r"--env \(key 'env'\): .*'RANK' is set by"):
        load_job_file(job, Overrides(env={"RANK": "3"}))
    with pytest.raises(errors.InvalidSpec, match=r"--name \(key 'name'\)"):
        load_job_file(job, Overrides(name="no spaces"))
    with pytest.raises(errors.InvalidSpec, match="--env 'LR': give KEY=VALUE"):
        parse_env_flags(["LR"])
    assert Overrides(3, "x", {"TOKEN": "secret"}).describe() == ["--nodes 3", "--name x",
                                                                 "--env TOKEN"]


def test_a_bad_value_in_the_file_is_not_blamed_on_a_flag(tmp_path):
    job = write_job(tmp_path, 'spares = -1\n[env]\n"BAD KEY" = "x"\n')
    with pytest.raises(errors.InvalidSpec) as refused:
        load_job_file(job, Overrides(nodes=2, env={"LR": "0.1"}))
    assert "key 'nodes.spares'" in str(refused.value) and "key 'env'" in str(refused.value)
    assert "--nodes" not in str(refused.value) and "--env" not in str(refused.value)


def test_a_files_glob_that_matches_nothing_is_refused_naming_it(tmp_path):
    (tmp_path / "train.py").write_text("")
    bundle.pack(tmp_path, ["*.py"])
    with pytest.raises(errors.InvalidSpec, match=r"files: 'data/\*.csv' match no file"):
        bundle.pack(tmp_path, ["*.py", "data/*.csv"])


def test_node_ids_do_not_look_like_job_ids():
    job_id = re.compile(r"^[A-Za-z0-9._-]+-[0-9a-f]{8}$")  # jobs: NAME-8hex
    node = node_id("mnist5k-digits")
    assert node.startswith("node-mnist5k-digits-") and not job_id.match(node)


def test_local_nodes_run_the_installed_coord_agent_script_else_the_module(tmp_path):
    assert agent_command(tmp_path) == [sys.executable, "-m", "agent.main"]
    script = tmp_path / "coord-agent"
    script.write_text("#!/bin/sh\n")
    assert agent_command(tmp_path) == [sys.executable, "-m", "agent.main"]  # not executable
    script.chmod(0o755)
    assert agent_command(tmp_path) == [str(script)]


def test_connection_refused_is_one_line_with_the_address_its_source_and_what_to_do(
        monkeypatch, tmp_path):
    address = f"127.0.0.1:{free_port()}"  # nobody listens there
    monkeypatch.setenv("COORD_ADDR", address)
    monkeypatch.setenv("COORD_INSECURE", "1")
    result = CliRunner().invoke(app, ["jobs"])
    assert result.exit_code == 4, result.output
    [line] = result.output.strip().splitlines()
    assert line == (f"error: cannot reach coordd at {address} (address from COORD_ADDR): "
                    "connection refused; check COORD_ADDR, or start one with `coordd serve`")


def test_with_no_address_anywhere_coord_says_to_start_coordd(monkeypatch, tmp_path):
    monkeypatch.delenv("COORD_ADDR", raising=False)
    monkeypatch.setenv("COORDD_STATE_DIR", str(tmp_path))
    monkeypatch.setattr("coordinator.client.sdk.CONFIG_PATH", tmp_path / "none.toml")
    result = CliRunner().invoke(app, ["status", "x"])
    assert result.exit_code == 4
    assert "start one here with `coordd serve`" in result.output


async def test_the_sdk_never_tries_a_state_dir_address_no_coordd_holds(monkeypatch, tmp_path):
    """A coordd.addr left by a coordd that crashed: the lock beside it is free, so the
    client says no coordd runs there rather than trying a port someone else may own."""
    (tmp_path / "coordd.addr").write_text(f"127.0.0.1:{free_port()}\n")
    monkeypatch.delenv("COORD_ADDR", raising=False)
    monkeypatch.setenv("COORDD_STATE_DIR", str(tmp_path))
    monkeypatch.setattr("coordinator.client.sdk.CONFIG_PATH", tmp_path / "none.toml")
    with pytest.raises(errors.Unavailable, match=rf"no coordd runs on {tmp_path}; start one "
                                                 r"here with `coordd serve`, or set"):
        async with AsyncClient() as client:
            await client.get("x")


COMMANDS = ["submit", "status", "jobs", "logs", "cancel", "nodes", "exec", "upload", "download",
            "debug", "debug interrupt"]


@pytest.mark.parametrize("args", [["--version"], ["-h"]] + [c.split() + ["-h"] for c in COMMANDS])
def test_version_and_short_help_everywhere(args):
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert ("coord 0." in result.output) if args == ["--version"] else "Usage" in result.output


def test_boolean_flags_come_in_pairs():
    for command in ("submit", "jobs", "nodes", "logs"):
        text = CliRunner().invoke(app, [command, "-h"], terminal_width=200).output
        pairs = {"submit": "--detach", "jobs": "--active", "nodes": "--live",
                 "logs": "--no-follow"}
        assert pairs[command] in text, (command, text)
