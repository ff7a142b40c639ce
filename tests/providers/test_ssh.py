"""The ssh provider against a real sshd on loopback: coordd bootstraps agents on two host
entries (the same sshd, separate remote directories), a 2-node job runs to SUCCEEDED, the
node verbs round-trip through the CLI and the SDK, and a host that refuses the key gives a
clear error while the job waits, fails as configured, and coordd keeps serving."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import stat
import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path

import pytest

from contract.errors import ProviderError
from contract.states import JobState, NodeState
from coordinator.providers.base import AgentAccess
from coordinator.providers.procs import signal_session
from coordinator.providers.ssh import SshProvider
from coordinator.providers.sshboot import stop_script
from coordinator.providers.sshhost import HostError, complete, connect, exit_code
from coordinator.settings import SshHost, SshSettings
from coordinator.store import JobRecord, NodeRecord, Store
from tests.integration.harness import start_coordd, wait_for
from tests.providers.sshd import Sshd, start_sshd

# The hosts are this machine: instead of downloading coord's dependencies into each venv
# (~25 s), the venv borrows them from the test environment; coord itself is still installed
# from the wheel coordd ships.
PY = f"python{sys.version_info.major}.{sys.version_info.minor}"
INSTALL = (f"{sys.base_prefix}/bin/{PY} -m venv --without-pip {{venv}} && "
           f"{sys.executable} -m pip --python {{venv}}/bin/python install --quiet --no-deps "
           f"--no-index {{wheel}} && echo {sysconfig.get_paths()['purelib']} > "
           f"{{venv}}/lib/{PY}/site-packages/test-deps.pth")


@pytest.fixture(scope="module")
def sshd(tmp_path_factory) -> Sshd:
    server = start_sshd(tmp_path_factory.mktemp("sshd"))
    yield server
    server.stop()


def host(name: str, sshd: Sshd, root: Path, **changes) -> dict:
    """A `[[ssh.hosts]]` entry for the test sshd."""
    return {"name": name, "address": "127.0.0.1", "port": sshd.port, "user": sshd.user,
            "key_file": str(sshd.key), "known_hosts": str(sshd.known_hosts),
            "remote_dir": str(root / name), **changes}


def ssh_config(*hosts: dict) -> dict:
    return {"install_command": INSTALL, "bootstrap_timeout_s": 60, "hosts": list(hosts)}


def toml(ssh: dict) -> str:
    """coordd's config file (JSON strings and numbers are TOML too)."""
    def table(header: str, values: dict) -> str:
        return header + "".join(f"{key} = {json.dumps(value)}\n" for key, value in
                                values.items() if key != "hosts")
    return table("[ssh]\n", ssh) + "".join(table("[[ssh.hosts]]\n", h) for h in ssh["hosts"])


def provider(ssh: dict, access: AgentAccess) -> SshProvider:
    async def no_events(*args, **kwargs) -> None:
        pass
    return SshProvider(SshSettings.model_validate(ssh), access, 1.0, no_events)


def start(tmp_path: Path, config: str):
    path = tmp_path / "coordd.toml"
    path.write_text(config)
    return start_coordd(tmp_path / "state", "--heartbeat-timeout", "3",
                        env={"COORDD_CONFIG": str(path), "COORDD_PROVIDER_RETRY_S": "0.5",
                             "COORDD_STOP_GRACE_S": "2"})


def job_file(tmp_path: Path, run: str, count: int, wait_for_min_s: float = 600) -> Path:
    path = tmp_path / "job" / "job.toml"
    path.parent.mkdir(exist_ok=True)
    path.write_text(textwrap.dedent(f"""
        name = "over-ssh"
        run = {json.dumps(run)}
        [nodes]
        count = {count}
        wait_for_min_s = {wait_for_min_s}
        [resources]
        provider = "ssh"
    """))
    return path


def provider_data(state_dir: Path, node_id: str | None = None) -> dict:
    with sqlite3.connect(state_dir / "coord.db") as db:
        rows = db.execute("select id, provider_json from nodes where provider='ssh'").fetchall()
    data = {row[0]: json.loads(row[1]) for row in rows}
    return data[node_id] if node_id else data


def kill_agents(pids) -> None:
    """Agents outlive coordd by design: a failing test must not leave them behind."""
    for pid in pids:
        signal_session(pid, signal.SIGKILL)


def command_lines() -> list[bytes]:
    lines = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                lines.append((entry / "cmdline").read_bytes())
            except OSError:
                pass
    return lines


@pytest.mark.timeout(120)
def test_two_node_job_over_ssh_and_the_node_verbs(sshd, tmp_path):
    remote = tmp_path / "hosts"
    coordd = start(tmp_path, toml(ssh_config(host("alpha", sshd, remote),
                                             host("beta", sshd, remote))))
    go = tmp_path / "go"
    try:
        with coordd.client() as client:
            job = client.submit(job_file(tmp_path, f"echo x > mine.txt; while [ ! -e {go} ]; "
                                         "do sleep 0.1; done; echo rank $RANK of $WORLD_SIZE "
                                         "done", count=2))
            wait_for(lambda: client.get(job.id).state == JobState.RUNNING, 60,
                     interval=0.2, what="the job to run on both ssh hosts")
            nodes = client.nodes(job.id)
            assert sorted(n.provider for n in nodes) == ["ssh", "ssh"]
            placed = {provider_data(coordd.state_dir, n.id)["host"]: n.id for n in nodes}
            assert sorted(placed) == ["alpha", "beta"]  # one node per host
            for name in placed:  # each host entry bootstrapped its own directory
                assert (remote / name / "venv" / "bin" / "coord-agent").exists()
            agent_token = (coordd.state_dir / "agent-token").read_text().strip().encode()
            assert not [line for line in command_lines() if agent_token in line], \
                "the agent token is visible on a command line"
            assert agent_token not in coordd.log_path.read_bytes(), "coordd logged the token"
            node, workdir = placed["beta"], remote / "beta" / "work"
            # The agent came up in an ssh session (umask 022 here): what the job writes, and
            # its unpacked directory, are the owner's only all the same.
            written = wait_for(lambda: list(workdir.glob(f"jobs/{job.id}/mine.txt")), 30,
                               what="the worker's file")[0]
            assert stat.S_IMODE(written.stat().st_mode) == 0o600
            assert stat.S_IMODE(written.parent.stat().st_mode) == 0o700

            # exec through the CLI: output streamed back, the command's exit code kept
            result = coordd.cli("exec", node, "--", "echo out; echo err >&2; pwd; exit 7")
            assert result.returncode == 7, result.stderr
            assert result.stdout.splitlines() == ["out", str(workdir)]
            assert result.stderr.strip() == "err"

            # upload, then download, through the CLI: several chunks, byte for byte
            payload = os.urandom(2 * 2**20 + 12345)
            (tmp_path / "payload.bin").write_bytes(payload)
            result = coordd.cli("upload", node, str(tmp_path / "payload.bin"), "data/in.bin")
            assert result.returncode == 0, result.stderr
            assert (workdir / "data" / "in.bin").read_bytes() == payload
            result = coordd.cli("download", node, "data/in.bin", str(tmp_path / "back.bin"))
            assert result.returncode == 0, result.stderr
            assert (tmp_path / "back.bin").read_bytes() == payload
            missing = coordd.cli("download", node, "no/such.file", str(tmp_path))
            assert missing.returncode == 2 and "no such file" in missing.stderr
            assert node in missing.stderr and "no/such.file" in missing.stderr

            # the SDK: `python` on the node is the agent's venv; this also lets the job end
            ran = client.exec(node, ["python", "-c", "import sys; print(sys.prefix)"])
            assert ran.exit_code == 0 and ran.stdout.decode().strip().endswith("venv")
            assert client.exec(node, f"touch {go}").exit_code == 0
            final = client.wait(job.id, timeout=60)
            assert final.state == JobState.SUCCEEDED, final.reason
            lines = sorted(line.text for line in client.logs(job.id))
            assert lines == ["rank 0 of 2 done", "rank 1 of 2 done"]
        # the job's end stopped both agents over ssh, and everything they started
        pids = [data["pid"] for data in provider_data(coordd.state_dir).values()]
        assert len(pids) == 2
        wait_for(lambda: not any(Path(f"/proc/{pid}").exists() for pid in pids), 30,
                 what="the agents to be stopped")
    finally:
        coordd.stop()
        kill_agents(d["pid"] for d in provider_data(coordd.state_dir).values() if "pid" in d)


@pytest.mark.timeout(90)
def test_a_host_that_refuses_the_key_fails_the_job_as_configured(sshd, tmp_path):
    coordd = start(tmp_path, toml(ssh_config(host("gamma", sshd, tmp_path,
                                                  key_file=str(sshd.stranger_key)))))
    try:
        with coordd.client() as client:
            job = client.submit(job_file(tmp_path, "true", count=1, wait_for_min_s=4))
            error = wait_for(lambda: [e for e in client.watch(job.id, follow=False)
                                      if e.kind == "provider.error"], 30, interval=0.2,
                             what="the provider error")[0]
            assert "ssh host gamma" in error.message and "refused the key" in error.message
            assert str(sshd.stranger_key) in error.message
            assert client.get(job.id).state == JobState.PROVISIONING  # it waits
            final = client.wait(job.id, timeout=30)
            assert final.state == JobState.FAILED
            assert "nodes.wait_for_min_s" in final.reason
            assert coordd.process.poll() is None
            assert [j.id for j in client.jobs()] == [job.id]  # still serving
    finally:
        coordd.stop()


async def test_unreachable_host_and_failed_install_name_the_host_and_step(sshd, tmp_path):
    """The provider alone (no coordd): each failure says which host and which step."""
    ssh = ssh_config(host("down", sshd, tmp_path, port=1), host("broken", sshd, tmp_path))
    ssh.update(install_command="echo pip exploded >&2; exit 3", connect_timeout_s=5)
    ssh_hosts = provider(ssh, AgentAccess(lambda: "127.0.0.1:1", "agent-token"))
    nodes = [NodeRecord(id=f"n{i}", provider="ssh") for i in range(3)]
    with pytest.raises(ProviderError) as failure:
        await ssh_hosts.launch(nodes, JobRecord(id="j", name="j", spec_json="{}"), None)
    message = str(failure.value)
    assert "ssh host down (root@127.0.0.1:1): connect failed: unreachable" in message
    assert "ssh host broken" in message and "install failed: exit status 3: pip exploded" in message
    assert "no free ssh host for node n2" in message
    for node in nodes[:2]:  # the registry frees what failed; so the hosts can be taken again
        await ssh_hosts.terminate(node, lost=True)
    assert ssh_hosts._claim(nodes[2]).name == "down"


@pytest.mark.parametrize("left_as", [NodeState.GONE, NodeState.LOST])
async def test_a_node_that_leaves_while_it_boots_leaves_no_agent_behind(sshd, tmp_path,
                                                                        left_as):
    """Cancelled mid-bootstrap (GONE): the launch ends quietly. Given up on by the registry's
    join timeout (LOST): the launch fails, naming the host and quoting agent.log. Either way
    the agent that comes up is stopped at once and the host is free again."""
    never_answers = AgentAccess(lambda: "127.0.0.1:1", "agent-token", insecure=True)
    ssh_hosts = provider(ssh_config(host("delta", sshd, tmp_path)), never_answers)
    assert ssh_hosts.join_timeout_s > 60  # the registry waits out the bootstrap's own limit
    node = NodeRecord(id="n1", provider="ssh")
    launch = asyncio.create_task(ssh_hosts.launch([node], JobRecord(id="j", name="j",
                                                                    spec_json="{}"), None))
    try:
        await asyncio.to_thread(wait_for, lambda: node.provider_data.get("pid"), 30,
                                what="the agent to start")
        node.state = left_as  # what the registry does
        await ssh_hosts.terminate(node, lost=left_as == NodeState.LOST)
        if left_as == NodeState.GONE:
            await asyncio.wait_for(launch, 30)
        else:
            with pytest.raises(ProviderError, match=r"ssh host delta .*marked lost before its "
                                                    r"agent registered\. End of .*agent\.log"):
                await asyncio.wait_for(launch, 30)
        assert not Path(f"/proc/{node.provider_data['pid']}").exists()
        assert ssh_hosts._claim(NodeRecord(id="n2", provider="ssh")).name == "delta"
    finally:
        kill_agents([node.provider_data["pid"]] if "pid" in node.provider_data else [])


def started_as(*argv: str) -> subprocess.Popen:
    return subprocess.Popen(["bash", "-c", 'exec -a "$0" sleep 60', *argv],
                            start_new_session=True)


def test_stop_kills_the_agent_of_this_node_and_nothing_else():
    """After a host reboots, the recorded pid may belong to another process."""
    stranger = started_as("stranger")
    other_agent = started_as("coord-agent --node-id n10 --workdir w")
    agent = started_as("coord-agent --node-id n1 --workdir w")
    try:
        for process in (stranger, other_agent, agent):
            subprocess.run(["bash", "-c", stop_script(process.pid, "n1", 1.0)], check=True,
                           timeout=30)
        assert agent.wait(10) is not None
        assert stranger.poll() is None and other_agent.poll() is None
    finally:
        for process in (stranger, other_agent, agent):
            process.kill()
            process.wait()


def verbs_on(sshd: Sshd, workdir: Path) -> tuple[SshProvider, NodeRecord]:
    """A provider and a node placed on the test sshd, without bootstrapping an agent."""
    hosts = provider(ssh_config(host("eta", sshd, workdir)), AgentAccess(lambda: "", ""))
    return hosts, NodeRecord(id="n1", provider="ssh", provider_data={
        "host": "eta", "workdir": str(workdir)})


async def test_an_abandoned_exec_with_heavy_output_is_killed_on_the_host(sshd, tmp_path):
    ssh_hosts, node = verbs_on(sshd, tmp_path)
    marker = f"coord-abandoned-{os.getpid()}-ssh"
    pieces = ssh_hosts.exec(node, f"yes {marker} | head -c 500M")
    assert marker.encode() in (await anext(pieces)).stdout
    await asyncio.sleep(0.5)  # the channel's window fills while nobody reads
    await asyncio.wait_for(pieces.aclose(), 10)
    await asyncio.to_thread(wait_for, lambda: not [line for line in command_lines()
                                                   if marker.encode() in line], 15,
                            what="the command to end on the host")


async def test_an_aborted_upload_over_sftp_leaves_no_partial_file(sshd, tmp_path):
    ssh_hosts, node = verbs_on(sshd, tmp_path)

    async def aborted():
        yield os.urandom(1 << 20)
        raise ConnectionResetError("the client went away")

    with pytest.raises(ConnectionResetError):
        await ssh_hosts.upload(node, "data/in.bin", aborted())
    assert list((tmp_path / "data").iterdir()) == []


async def test_a_command_that_never_answers_and_a_dropped_connection_are_host_errors(sshd):
    host_entry = SshHost.model_validate(host("theta", sshd, Path("/tmp")))
    async with await connect(host_entry, 5) as conn:
        with pytest.raises(HostError, match=r"ssh host theta .*: check failed: no answer "
                                            r"within 0\.5 s"):
            await complete(conn, host_entry, "check", "sleep 30", timeout_s=0.5)
    dropped = subprocess.CompletedProcess([], 0)
    dropped.exit_status, dropped.exit_signal = None, None  # what asyncssh leaves then
    with pytest.raises(HostError, match="connection to theta broke"):
        exit_code(dropped, host_entry, "exec")


@pytest.mark.timeout(60)
def test_a_host_coordd_cannot_reach_is_its_error_not_an_unreachable_coordd(tmp_path):
    """coordd answers; the ssh host of a node does not. `coord exec` says which host and
    exits with the provider code (8), not "cannot reach coordd" (4)."""
    state = tmp_path / "state"
    state.mkdir(mode=0o700)

    async def seed() -> None:  # a node coordd placed on the host before it went down
        store = await Store.open(state / "coord.db")
        await store.save_node(NodeRecord(id="node-on-down", provider="ssh",
                                         state=NodeState.READY, host="127.0.0.1",
                                         provider_data={"host": "down", "workdir": "/w"}))
        await store.close()
    asyncio.run(seed())
    down = {"name": "down", "address": "127.0.0.1", "port": 1, "remote_dir": str(tmp_path)}
    (tmp_path / "coordd.toml").write_text(toml({"connect_timeout_s": 5, "hosts": [down]}))
    coordd = start_coordd(state, env={"COORDD_CONFIG": str(tmp_path / "coordd.toml")})
    try:
        result = coordd.cli("exec", "node-on-down", "--", "true")
    finally:
        coordd.stop()
    assert result.returncode == 8, result.stderr
    assert "ssh host down" in result.stderr and "cannot reach coordd" not in result.stderr
