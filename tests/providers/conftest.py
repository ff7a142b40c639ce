"""Fixtures for the aws provider: a stand-in EC2 on loopback and coordds configured for it."""

from __future__ import annotations

import json
import logging
import textwrap
from collections.abc import Callable

import pytest

from coordinator.localcluster import LocalCoordd, start_coordd
from tests.net import free_port
from tests.providers.ec2_cloud import AGENT_SETTINGS, AWS_ENV, REGION, Ec2Cloud


@pytest.fixture
def cloud(tmp_path) -> Ec2Cloud:
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # moto logs every request
    ec2 = Ec2Cloud(tmp_path / "instances")
    yield ec2
    ec2.close()


@pytest.fixture
def bare_cloud(monkeypatch) -> Ec2Cloud:
    """The stand-in EC2 alone (no agents boot), for the provider called directly."""
    for key, value in AWS_ENV.items():
        monkeypatch.setenv(key, value)
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    ec2 = Ec2Cloud(None)
    yield ec2
    ec2.close()


@pytest.fixture
def aws_coordd(tmp_path, cloud) -> Callable[[], LocalCoordd]:
    """Starts (and restarts) coordd with the aws provider on one state directory and port."""
    config = tmp_path / "coordd.toml"
    agent = "".join(f"{key} = {json.dumps(value)}\n" for key, value in AGENT_SETTINGS.items())
    config.write_text(textwrap.dedent(f"""
        [aws]
        enabled = true
        region = "{REGION}"
        endpoint_url = "{cloud.proxy.endpoint}"
        fallback_backoff_s = 0.1
        fallback_backoff_max_s = 0.5
    """) + agent + textwrap.dedent(f"""
        [aws.defaults]
        ami = "{cloud.ami}"
        tags = {{ team = "ml" }}
    """))
    env = {**AWS_ENV, "COORDD_CONFIG": str(config), "COORDD_PROVIDER_RETRY_S": "0.5",
           "COORDD_STOP_GRACE_S": "2"}
    listen = f"127.0.0.1:{free_port()}"
    started: list[LocalCoordd] = []

    def start() -> LocalCoordd:
        started.append(start_coordd(tmp_path / "state", "--heartbeat-timeout", "3", env=env,
                                    listen=listen))
        return started[-1]

    yield start
    for server in started:
        server.stop()


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory):
    """A real Slurm (tests/providers/slurmcluster.py), started once for the session."""
    from tests.providers.slurmcluster import missing_binaries, start_cluster
    if missing := missing_binaries():
        pytest.skip(f"needs Debian's slurm-wlm and munge (scripts/setup.sh installs them as "
                    f"root): missing {', '.join(missing)}")
    cluster = start_cluster(tmp_path_factory.mktemp("slurm"))
    yield cluster
    cluster.stop()
