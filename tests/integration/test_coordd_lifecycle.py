"""coordd's lifecycle as a person meets it: where it is, `coordd status` and `coordd stop`,
one coordd per state directory, a stale coordd.addr never trusted, and a state directory
nobody else can read."""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
from pathlib import Path

import pytest

from contract import instance
from contract.states import JobState
from coordinator.localcluster import BIN
from coordinator.statedir import PUBLIC_FILES
from tests.integration.harness import start_coordd, wait_for


def coordd(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "coordd"), *args], capture_output=True, text=True,
                          timeout=60)


def open_to_others(state_dir: Path) -> list[str]:
    found = []
    for root, dirs, files in os.walk(state_dir):
        for name in dirs + files:
            path = Path(root, name)
            mode = stat.S_IMODE(path.lstat().st_mode)
            if mode & 0o077 and path.relative_to(state_dir) not in PUBLIC_FILES:
                found.append(f"{path} {mode:04o}")
    return found


@pytest.mark.timeout(120)
def test_a_loose_state_dir_is_fixed_at_start_and_a_fresh_one_is_never_readable(tmp_path):
    loose = tmp_path / "loose"
    loose.mkdir(mode=0o755)
    loose.chmod(0o755)
    (loose / "coord.db").touch()
    (loose / "coord.db").chmod(0o644)
    server = start_coordd(loose)
    server.stop()
    assert stat.S_IMODE(loose.stat().st_mode) == 0o700
    assert stat.S_IMODE((loose / "coord.db").stat().st_mode) == 0o600
    warnings = [json.loads(line) for line in server.log_path.read_text().splitlines()
                if '"statedir.permissions"' in line]
    assert {(w["path"], w["old"], w["new"]) for w in warnings} == {
        (str(loose), "0755", "0700"), (str(loose / "coord.db"), "0644", "0600")}
    printed = (loose / "coordd.out").read_text()
    assert f"warning: {loose / 'coord.db'} was 0644, open to other users: now 0600" in printed

    # A fresh one, after a job has run (bundle, node dirs, worker output, logs, checkpoints).
    fresh = tmp_path / "fresh"
    server = start_coordd(fresh)
    try:
        work = tmp_path / "work"
        work.mkdir()
        (work / "job.toml").write_text(
            'name = "quiet"\nrun = "echo secret > out.txt && mkdir -p $COORD_CHECKPOINT_DIR '
            '&& echo x > $COORD_CHECKPOINT_DIR/c"\n[nodes]\ncount = 1\n')
        with server.client() as client:
            job = client.submit(work / "job.toml")
            assert client.wait(job.id, timeout=60).state == JobState.SUCCEEDED
    finally:
        server.stop()
    assert list(fresh.glob("nodes/*/jobs/*/out.txt")) and list(fresh.glob("bundles/*"))
    assert open_to_others(fresh) == []


def test_coordd_tightens_its_own_entries_only_and_refuses_a_directory_in_use(tmp_path):
    home = tmp_path / "home"
    (home / "notes").mkdir(parents=True)
    (home / "notes" / "todo.txt").write_text("x")
    (home / "notes" / "todo.txt").chmod(0o644)
    refused = coordd("serve", "--state-dir", str(home), "--listen", "127.0.0.1:0")
    assert refused.returncode == 2
    assert f"{home} is not empty and holds nothing of coord's" in refused.stderr
    assert stat.S_IMODE((home / "notes" / "todo.txt").stat().st_mode) == 0o644
    assert not (home / "coordd.log").exists()

    # A state directory that also holds someone else's file: coord's entries are tightened,
    # below a loose one of them too; the stranger is left alone.
    state = tmp_path / "state"
    (state / "nodes" / "n1").mkdir(parents=True)
    (state / "nodes").chmod(0o755)
    (state / "nodes" / "n1" / "out.txt").write_text("x")
    (state / "nodes" / "n1" / "out.txt").chmod(0o644)
    (state / "theirs.txt").write_text("x")
    (state / "theirs.txt").chmod(0o644)
    start_coordd(state).stop()
    assert stat.S_IMODE((state / "nodes").stat().st_mode) == 0o700
    assert stat.S_IMODE((state / "nodes" / "n1" / "out.txt").stat().st_mode) == 0o600
    assert stat.S_IMODE((state / "theirs.txt").stat().st_mode) == 0o644


@pytest.mark.timeout(120)
def test_status_and_stop_find_the_running_coordd_and_a_second_one_refuses(tmp_path):
    state = tmp_path / "state"
    server = start_coordd(state)
    try:
        banner = wait_for(lambda: "stop it:" in (text := (state / "coordd.out").read_text())
                          and text, 10, what="the lines saying where coordd is")
        assert f"coordd listening on {server.address}" in banner
        assert f"state dir: {state}" in banner and f"log file:  {state / 'coordd.log'}" in banner
        assert f"COORDD_STATE_DIR={state}" in banner and "{" not in banner  # plain, no JSON

        status = coordd("status", "--state-dir", str(state))
        assert status.returncode == 0, status.stderr
        assert f"pid {server.process.pid}, address {server.address}" in status.stdout

        second = coordd("serve", "--state-dir", str(state), "--listen", "127.0.0.1:0")
        assert second.returncode == 1
        assert f"another coordd (pid {server.process.pid}, address {server.address}) " \
               f"already runs on {state}" in second.stderr

        stopped = coordd("stop", "--state-dir", str(state))
        assert stopped.returncode == 0, stopped.stderr
        assert server.process.poll() is not None or server.process.wait(5) == 0
        assert server.process.returncode == 0
        assert not (state / "coordd.addr").exists()
    finally:
        server.stop()
    again = coordd("stop", "--state-dir", str(state))
    assert again.returncode == 3 and f"no coordd runs on {state}" in again.stdout


@pytest.mark.timeout(120)
def test_a_wildcard_listen_names_this_machine_and_status_stop_read_the_config(tmp_path):
    state, config = tmp_path / "state", tmp_path / "coordd.toml"
    config.write_text(f'state_dir = "{state}"\n')
    server = start_coordd(state, listen="0.0.0.0:0")
    try:
        port = server.address.rpartition(":")[2]
        banner = wait_for(lambda: "stop it:" in (text := (state / "coordd.out").read_text())
                          and text, 10, what="the lines saying where coordd is")
        assert f"COORD_ADDR={socket.gethostname()}:{port} " in banner
        assert "COORD_ADDR=0.0.0.0" not in banner
        status = coordd("status", "--config", str(config))
        assert status.returncode == 0 and f"state dir {state}" in status.stdout, status.stderr
        stopped = coordd("stop", "--config", str(config))
        assert stopped.returncode == 0, stopped.stderr
    finally:
        server.stop()


@pytest.mark.timeout(120)
def test_a_crashed_coordds_address_is_never_trusted(tmp_path):
    state = tmp_path / "state"
    server = start_coordd(state, "--log-format", "json")
    wait_for(lambda: '"coordd.listening"' in (state / "coordd.out").read_text(), 10,
             what="the JSON log on the terminal")
    assert instance.live_address(state) == server.address
    server.process.send_signal(signal.SIGKILL)
    server.process.wait()
    assert (state / "coordd.addr").read_text().strip() == server.address  # left behind
    assert instance.live_address(state) is None
    status = coordd("status", "--state-dir", str(state))
    assert status.returncode == 3
    assert "coordd.addr there is stale" in status.stdout
    client = subprocess.run([str(BIN / "coord"), "jobs"], capture_output=True, text=True,
                            env={**os.environ, "COORDD_STATE_DIR": str(state)}, timeout=60)
    assert client.returncode == 4 and f"no coordd runs on {state}" in client.stderr
    restarted = start_coordd(state)  # the dead one's lock went with it
    try:
        assert instance.running(state).pid == restarted.process.pid
    finally:
        restarted.stop()
