"""`coord-agent`: runs on each node, connects to coordd, and runs the workers it is told to."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import os
import signal
import socket
from pathlib import Path
from typing import Annotated

import structlog
import typer

from agent.connection import Connection
from agent.notices import NoticeWatcher
from agent.outbox import Outbox
from agent.supervisor import Supervisor
from contract import events as ev
from contract import logs
from contract.transport import ca_bytes
from coord.leader import split_addresses
from coord.v1 import agent_pb2, types_pb2

log = structlog.get_logger("agent")
app = typer.Typer(add_completion=False)
OPTIONAL_SOFTWARE = ("torchft",)
OWNER_ONLY = 0o077  # the umask of the agent and of everything it starts
ACK_WAIT_S = 3.0  # for coordd to acknowledge the last exits, when it may be failing over


def detect_resources() -> types_pb2.Resources:
    gpus = len([p for p in Path("/dev").glob("nvidia[0-9]*")])
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    # Workers run with this interpreter (see contract.workerenv.node_env): what it can import, they can.
    software = [name for name in OPTIONAL_SOFTWARE if importlib.util.find_spec(name)]
    return types_pb2.Resources(cpus=os.cpu_count() or 1, gpus=gpus, memory_bytes=memory,
                               software=software)


def default_host(coordinator: str) -> str:
    """The local address that routes to the coordinator: what peers on its network can reach."""
    host = coordinator.rsplit(":", 1)[0].strip("[]")
    with contextlib.suppress(OSError), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.connect((host, 9))
        return sock.getsockname()[0]
    return socket.gethostbyname(socket.gethostname())


async def run(coordinator: str, token: str, node_id: str, host: str, workdir: Path,
              stop_grace_s: float, imds_endpoint: str = "", imds_interval_s: float = 5.0,
              ca_pem: bytes | None = None, insecure: bool = False,
              cpus: int | None = None) -> None:
    outbox = Outbox()
    conn: Connection

    async def fetch_bundle(job_id: str, digest: str) -> bytes:
        return await conn.fetch_bundle(job_id, digest)

    supervisor = Supervisor(workdir, outbox, fetch_bundle, cpus)
    supervisor.prewarm()  # before connecting: the interpreter warms while the node registers
    conn = Connection(coordinator, token, node_id, host, detect_resources(), outbox, supervisor,
                      stop_grace_s, ca_pem, insecure)
    flusher = asyncio.create_task(outbox.flush_periodically())
    connection = asyncio.create_task(conn.run_forever())
    watcher = None
    if imds_endpoint:
        notices = NoticeWatcher(imds_endpoint, imds_interval_s,
                                lambda kind, body: on_notice(outbox, supervisor, kind, body))
        watcher = asyncio.create_task(notices.run())
    terminate = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, terminate.set)
    asked = asyncio.create_task(terminate.wait())
    try:
        await asyncio.wait({connection, asked}, return_when=asyncio.FIRST_COMPLETED)
        if terminate.is_set():
            await leave(outbox, supervisor, stop_grace_s, connection)
    finally:
        asked.cancel()
        connection.cancel()
        if watcher:
            watcher.cancel()
        await supervisor.close(stop_grace_s)
        flusher.cancel()
        await conn.close()
        log.info("agent.stopped")


def on_notice(outbox: Outbox, supervisor: Supervisor, kind: str, body: str) -> None:
    """An interruption notice means this node leaves soon: tell coordd at once, so the group
    re-forms at a step boundary and the replacement is asked for now. A rebalance
    recommendation is only reported."""
    if kind == "rebalance":
        for job_id in {w.job_id for w in supervisor.running()}:
            outbox.put(agent_pb2.AgentMessage(event=agent_pb2.AgentEvent(
                job_id=job_id, kind=ev.SPOT_REBALANCE, message="rebalance recommendation",
                data_json=body)))
        return
    outbox.put(agent_pb2.AgentMessage(leaving=agent_pb2.Leaving(
        reason=f"spot interruption notice {body}")))


async def leave(outbox: Outbox, supervisor: Supervisor, stop_grace_s: float,
                connection: asyncio.Task) -> None:
    """Say we are leaving before stopping our workers, then let their exits reach coordd,
    unless coordd ended the connection itself (it drained this node: nobody waits for them)."""
    log.info("agent.terminating", grace_s=stop_grace_s)
    outbox.put(agent_pb2.AgentMessage(leaving=agent_pb2.Leaving(reason="agent received SIGTERM")))
    await supervisor.close(stop_grace_s)
    outbox.flush()
    acked = asyncio.create_task(outbox.drained(timeout=ACK_WAIT_S))
    await asyncio.wait({acked, connection}, return_when=asyncio.FIRST_COMPLETED)
    acked.cancel()


@app.command()
def main_command(
    coordinator: Annotated[str, typer.Option(envvar="COORD_ADDR",
                                             help="coordd's HOST:PORT; a set's "
                                                  "a:7070,b:7070 (follows the leader)")],
    token: Annotated[str, typer.Option(envvar="COORD_TOKEN", show_default=False,
                                       help="an agent join token (coordd's STATE_DIR/"
                                            "agent-token, or `coordd token create --role "
                                            "agent`)")],
    ca: Annotated[Path | None, typer.Option(help="coordd's CA certificate (its STATE_DIR/tls/"
                                                 "ca.pem); else the PEM in COORD_CA_PEM (what "
                                                 "providers set), else the file in COORD_CA, "
                                                 "else the system's trusted roots")] = None,
    insecure: Annotated[bool, typer.Option(envvar="COORD_INSECURE",
                                           help="plaintext, for a coordd run with "
                                                "insecure_plaintext only")] = False,
    node_id: Annotated[str, typer.Option(envvar="COORD_NODE_ID",
                                         help="set by providers; empty: coordd assigns one")] = "",
    host: Annotated[str, typer.Option(help="address peers reach this node at "
                                      "(default: the one that routes to coordd)")] = "",
    workdir: Annotated[Path, typer.Option(help="where jobs are unpacked and run")] = Path(
        "~/.local/share/coord-agent"),
    stop_grace: Annotated[float, typer.Option(help="seconds between SIGTERM and SIGKILL for "
                                              "workers when the agent stops")] = 10.0,
    imds_endpoint: Annotated[str, typer.Option(envvar="COORD_IMDS_ENDPOINT",
                                               help="EC2 metadata service to watch for spot "
                                                    "interruption notices (off when empty)")] = "",
    imds_interval: Annotated[float, typer.Option(help="seconds between notice polls")] = 5.0,
    cpus: Annotated[int | None, typer.Option(
        min=1, help="cores this node's workers share: each gets OMP_NUM_THREADS = CPUS / its "
                    "workers unless the job sets it (default: torchrun's rule, 1 when a node "
                    "runs several workers; the local provider sets each node's share)")] = None,
    log_level: str = "info",
) -> None:
    """Run a node agent.

    Example: coord-agent --coordinator 10.0.0.5:7070 --token "$(cat agent-token)" --ca ca.pem
    """
    # Job files, bundles and snapshots hold the job's data: owner-only, however the agent was
    # started (an ssh session's umask is usually 022).
    os.umask(OWNER_ONLY)
    logs.configure(log_level)
    ca_pem = ca_bytes(ca or os.environ.get("COORD_CA_PEM") or os.environ.get("COORD_CA"))
    workdir = workdir.expanduser()
    workdir.mkdir(parents=True, exist_ok=True)
    asyncio.run(run(coordinator, token, node_id,
                    host or default_host(split_addresses(coordinator)[0]), workdir,
                    stop_grace, imds_endpoint, imds_interval, ca_pem, insecure, cpus))


def main() -> None:
    typer.run(main_command)


if __name__ == "__main__":
    main()
