"""Who may talk to coordd: TLS on the port, a token on every call, and the token's role
deciding which service it may use. Methods come from the descriptors, so a new RPC is
covered the day it is added."""

from __future__ import annotations

import json
import os
import stat
import subprocess

import grpc
import pytest

from coord.v1 import agent_pb2, jobs_pb2
from coordinator.localcluster import BIN
from tests.integration.harness import start_coordd, wait_for

SERVICES = [jobs_pb2.DESCRIPTOR.services_by_name["JobService"],
            agent_pb2.DESCRIPTOR.services_by_name["AgentService"]]
METHODS = [(service, method) for service in SERVICES for method in service.methods]


@pytest.fixture(scope="module")
def coordd(tmp_path_factory):
    server = start_coordd(tmp_path_factory.mktemp("auth") / "state")
    yield server
    server.stop()


def call(channel: grpc.Channel, service, method, token: str | None,
         payload: bytes | list[bytes] = b"", timeout: float = 10):
    """Invoke any method with raw request bytes (a list: several, for a client stream);
    returns the responses (bytes)."""
    path = f"/{service.full_name}/{method.name}"
    metadata = (("authorization", f"Bearer {token}"),) if token is not None else ()
    shape = {(False, False): channel.unary_unary, (False, True): channel.unary_stream,
             (True, False): channel.stream_unary, (True, True): channel.stream_stream}
    stub = shape[(method.client_streaming, method.server_streaming)](path)
    payloads = payload if isinstance(payload, list) else [payload]
    request = iter(payloads) if method.client_streaming else payload
    result = stub(request, metadata=metadata, timeout=timeout)
    return list(result) if method.server_streaming else result


def code_of(fn) -> grpc.StatusCode:
    try:
        fn()
    except grpc.RpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


@pytest.mark.timeout(60)
@pytest.mark.parametrize("token", [None, "", "wrong-token", "abc.def", "Bearer", "x" * 5000])
def test_every_rpc_without_valid_credentials_is_unauthenticated(coordd, token):
    channel = coordd.channel()
    for service, method in METHODS:
        code = code_of(lambda: call(channel, service, method, token))
        assert code == grpc.StatusCode.UNAUTHENTICATED, (method.full_name, code)


@pytest.mark.timeout(60)
def test_each_role_is_refused_the_other_service(coordd):
    channel = coordd.channel()
    tokens = {"client": coordd.token, "agent": coordd.agent_token}
    for service, method in METHODS:
        allowed = "client" if service.name == "JobService" else "agent"
        other = "agent" if allowed == "client" else "client"
        code = code_of(lambda: call(channel, service, method, tokens[other]))
        assert code == grpc.StatusCode.PERMISSION_DENIED, (method.full_name, other, code)


@pytest.mark.timeout(60)
def test_the_right_role_gets_through(coordd):
    channel = coordd.channel()
    jobs = jobs_pb2.DESCRIPTOR.services_by_name["JobService"]
    agents = agent_pb2.DESCRIPTOR.services_by_name["AgentService"]
    listed = call(channel, jobs, jobs.methods_by_name["ListJobs"], coordd.token)
    assert jobs_pb2.ListJobsResponse.FromString(listed).jobs is not None
    fetch = agent_pb2.FetchBundleRequest(digest="0" * 64).SerializeToString()
    code = code_of(lambda: call(channel, agents, agents.methods_by_name["FetchBundle"],
                                coordd.agent_token, fetch))
    assert code == grpc.StatusCode.NOT_FOUND  # past authentication and the role check


@pytest.mark.timeout(60)
def test_plaintext_to_the_tls_port_fails(coordd):
    channel = grpc.insecure_channel(coordd.address)
    jobs = jobs_pb2.DESCRIPTOR.services_by_name["JobService"]
    code = code_of(lambda: call(channel, jobs, jobs.methods_by_name["ListJobs"], coordd.token,
                                timeout=5))
    assert code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


@pytest.mark.timeout(60)
def test_a_certificate_from_another_ca_is_not_trusted(coordd, tmp_path):
    from coordinator import tls
    stranger = tls.ensure_generated(tmp_path / "tls", ["127.0.0.1"])
    channel = grpc.secure_channel(coordd.address, grpc.ssl_channel_credentials(stranger.ca_pem))
    jobs = jobs_pb2.DESCRIPTOR.services_by_name["JobService"]
    code = code_of(lambda: call(channel, jobs, jobs.methods_by_name["ListJobs"], coordd.token,
                                timeout=5))
    assert code == grpc.StatusCode.UNAVAILABLE


def test_secrets_on_disk_are_private_and_tokens_hashed(coordd):
    state = coordd.state_dir
    for name in ("token", "agent-token", "tokens.json", "tls/ca.key", "tls/server.key"):
        assert stat.S_IMODE((state / name).stat().st_mode) == 0o600, name
    stored = (state / "tokens.json").read_text()
    for token in (coordd.token, coordd.agent_token):
        assert token.split(".")[1] not in stored
    roles = sorted(t["role"] for t in json.loads(stored)["tokens"])
    assert roles == ["agent", "client"]


@pytest.mark.timeout(90)
def test_minted_tokens_work_with_their_role_and_stop_when_revoked(coordd):
    def coordd_cli(*args: str) -> str:
        result = subprocess.run([str(BIN / "coordd"), "token", *args, "--state-dir",
                                 str(coordd.state_dir)], capture_output=True, text=True,
                                timeout=30, check=True)
        return result.stdout.strip()

    client_token = coordd_cli("create", "--role", "client", "--note", "ci")
    agent_token = coordd_cli("create", "--role", "agent")
    channel = coordd.channel()
    jobs = jobs_pb2.DESCRIPTOR.services_by_name["JobService"]
    list_jobs = jobs.methods_by_name["ListJobs"]
    assert wait_for(lambda: code_of(lambda: call(channel, jobs, list_jobs, client_token))
                    == grpc.StatusCode.OK, 10, what="the new token to be accepted")
    assert code_of(lambda: call(channel, jobs, list_jobs, agent_token)) == \
        grpc.StatusCode.PERMISSION_DENIED
    assert "ci" in coordd_cli("list")
    coordd_cli("revoke", client_token.split(".")[0])
    wait_for(lambda: code_of(lambda: call(channel, jobs, list_jobs, client_token))
             == grpc.StatusCode.UNAUTHENTICATED, 10, what="the revoked token to be refused")
    assert code_of(lambda: call(channel, jobs, list_jobs, coordd.token)) == grpc.StatusCode.OK


@pytest.mark.timeout(60)
def test_a_local_user_sets_nothing(coordd, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("COORD")}
    env.update(COORDD_STATE_DIR=str(coordd.state_dir), XDG_CONFIG_HOME=str(tmp_path))
    result = subprocess.run([str(BIN / "coord"), "jobs"], env=env, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr


@pytest.mark.timeout(60)
def test_the_config_file_gives_address_token_and_ca(coordd, tmp_path):
    (tmp_path / "coord").mkdir()
    (tmp_path / "coord" / "config.toml").write_text(
        f'address = "{coordd.address}"\ntoken = "{coordd.token}"\nca = "{coordd.ca_path}"\n')
    env = {k: v for k, v in os.environ.items() if not k.startswith("COORD")}
    env.update(XDG_CONFIG_HOME=str(tmp_path), COORDD_STATE_DIR=str(tmp_path / "nothing"))
    result = subprocess.run([str(BIN / "coord"), "jobs"], env=env, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr


@pytest.mark.timeout(120)
def test_plaintext_only_when_asked_for(tmp_path):
    server = start_coordd(tmp_path / "state", env={"COORDD_INSECURE_PLAINTEXT": "true"})
    try:
        assert not (tmp_path / "state" / "tls").exists()
        channel = grpc.insecure_channel(server.address)
        jobs = jobs_pb2.DESCRIPTOR.services_by_name["JobService"]
        list_jobs = jobs.methods_by_name["ListJobs"]
        assert code_of(lambda: call(channel, jobs, list_jobs, server.token)) == \
            grpc.StatusCode.OK
        assert code_of(lambda: call(channel, jobs, list_jobs, None)) == \
            grpc.StatusCode.UNAUTHENTICATED
        (tmp_path / "job.toml").write_text('name = "plain"\nrun = "true"\n[nodes]\ncount = 1\n')
        env = {**server.env, "COORD_INSECURE": "1"}
        result = subprocess.run([str(BIN / "coord"), "submit", str(tmp_path / "job.toml")],
                                env=env, capture_output=True, text=True, timeout=90)
        assert result.returncode == 0, result.stdout + result.stderr  # its agent joined too
    finally:
        server.stop()
