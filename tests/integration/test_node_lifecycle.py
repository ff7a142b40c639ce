"""A real coordd and a real hand-started agent with a stable node id: lost while frozen, it
registers again when it wakes; once dead its row is removed after the retention; a stream
that breaks the protocol before registering is logged by coordd."""

from __future__ import annotations

import json
import os
import signal
import subprocess

import pytest

from contract.states import NodeState
from contract.transport import call_metadata
from coord.v1 import agent_pb2, agent_pb2_grpc
from coordinator.localcluster import BIN, start_coordd, wait_for

RETENTION_S = 5.0


@pytest.fixture
def coordd(tmp_path):
    server = start_coordd(tmp_path / "state", "--heartbeat-timeout", "1",
                          env={"COORDD_NODE_RETENTION_S": str(RETENTION_S)})
    yield server
    server.stop()


@pytest.fixture
def agent(coordd, tmp_path):
    with open(tmp_path / "agent.log", "wb") as out:
        process = subprocess.Popen(
            [str(BIN / "coord-agent"), "--coordinator", coordd.address, "--token",
             coordd.agent_token, "--ca", str(coordd.ca_path), "--node-id", "host-a",
             "--workdir", str(tmp_path / "agent")],
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    yield process
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def logged(coordd, event: str) -> list[dict]:
    lines = coordd.log_path.read_text().splitlines() if coordd.log_path.exists() else []
    return [e for e in map(json.loads, lines) if e.get("event") == event]


@pytest.mark.slow
@pytest.mark.timeout(90)
def test_a_lost_hand_started_node_registers_again_and_is_removed_once_dead(coordd, agent):
    with coordd.client() as client:
        def state():
            return next((n.state for n in client.nodes(include_gone=True) if n.id == "host-a"),
                        None)
        wait_for(lambda: state() == NodeState.READY, 30, what="the agent to register")
        os.killpg(agent.pid, signal.SIGSTOP)  # a hung host: its socket stays open
        try:
            wait_for(lambda: state() == NodeState.LOST, 15, what="the node to be lost")
        finally:
            os.killpg(agent.pid, signal.SIGCONT)
        wait_for(lambda: state() == NodeState.READY, 20, what="the node to register again")
        assert [e["decision"] for e in logged(coordd, "node.rejoin")] == ["fresh"]

        os.killpg(agent.pid, signal.SIGKILL)
        wait_for(lambda: state() == NodeState.LOST, 15, what="the dead node to be lost")
        wait_for(lambda: state() is None, RETENTION_S + 10, what="the dead node's removal")
        assert client.node_page(include_gone=True, limit=1).total == 0


@pytest.mark.timeout(60)
def test_a_stream_that_does_not_register_is_logged_by_coordd(coordd):
    with coordd.channel() as channel:
        stub = agent_pb2_grpc.AgentServiceStub(channel)
        call = stub.Connect(iter([agent_pb2.AgentMessage(heartbeat=agent_pb2.Heartbeat())]),
                            metadata=call_metadata(coordd.agent_token))
        with pytest.raises(Exception, match="register"):
            list(call)
    failed = wait_for(lambda: logged(coordd, "agent.stream_failed"), 10,
                      what="coordd to log the failed attempt")
    assert failed[0]["cause"] == "no_register" and failed[0]["peer"]
