"""The Python client SDK: everything `coord` does, for scripts and notebooks.

    from coordinator.client.sdk import Client
    with Client() as c:          # COORD_ADDR / COORD_TOKEN / COORD_CA, or the local coordd
        job = c.submit("examples/allreduce/job.toml")
        for line in c.logs(job.id, follow=True):
            print(line.text)
        print(c.wait(job.id).state)      # SUCCEEDED: a JobState, not a number

`AsyncClient` is the same API for asyncio code; docs/sdk.md is the reference.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import shlex
import threading
import tomllib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
from google.protobuf.message import Message

from contract import bundle
from contract.errors import ERROR_KEY, CoorddUnreachable, CoordError, from_status
from contract.instance import default_state_dir, live_address
from contract.spec import JobSpec, Overrides, load_job_file, parse_spec
from contract.states import JobState, NodeState
from contract.transport import ca_bytes, call_metadata, open_channel, truthy
from coord.leader import NOT_LEADER, leader_hint, next_address, split_addresses
from coord.v1 import jobs_pb2, jobs_pb2_grpc
from coordinator.client import transfer
from coordinator.client.sdktypes import (Job, JobEvent, LogLine, LogStream, Node, NodePage,
                                         Reformation, reformations)

FOLLOW_ATTEMPTS = 8  # with their pauses, longer than a failover takes
CONFIG_PATH = Path(os.environ.get("XDG_CONFIG_HOME", Path.home() / ".config")) / "coord" / \
    "config.toml"


@dataclasses.dataclass(frozen=True)
class Target:
    """Where coordd is and how to prove who we are to it."""

    address: str
    token: str
    ca_pem: bytes | None  # None: trust the system's roots
    insecure: bool = False  # plaintext: only for a coordd run with insecure_plaintext
    source: str = "argument"  # where `address` came from, for a person reading an error


def resolve(address: str | None = None, token: str | None = None,
            ca: str | bytes | Path | None = None) -> Target:
    """Each of address, token and CA: the argument > COORD_ADDR / COORD_TOKEN / COORD_CA (a
    file; COORD_CA_PEM: the PEM itself) > ~/.config/coord/config.toml (address, token, ca,
    insecure) > the local coordd's state directory (COORDD_STATE_DIR or ~/.local/state/coord:
    coordd.addr, token, tls/ca.pem). Set them once, or, on coordd's machine, not at all."""
    file: dict[str, Any] = {}
    if CONFIG_PATH.exists():
        file = tomllib.loads(CONFIG_PATH.read_text())
    env = os.environ
    state = Path(env.get("COORDD_STATE_DIR", default_state_dir()))
    address, source = _first((address, "argument"), (env.get("COORD_ADDR"), "COORD_ADDR"),
                             (file.get("address"), str(CONFIG_PATH)),
                             (live_address(state), str(state / "coordd.addr")))
    token = token or env.get("COORD_TOKEN") or file.get("token") or _read(state / "token")
    if not address:
        raise CoorddUnreachable(f"no coordd address: none in COORD_ADDR or {CONFIG_PATH}, and no "
                          f"coordd runs on {state}; start one here with `coordd serve`, or set "
                          "COORD_ADDR=HOST:PORT")
    if truthy(env.get("COORD_INSECURE") or file.get("insecure")):
        return Target(address, token or "", None, insecure=True, source=source)
    local_ca = state / "tls" / "ca.pem"
    ca = ca or env.get("COORD_CA") or env.get("COORD_CA_PEM") or file.get("ca") or \
        (local_ca if local_ca.exists() else None)
    return Target(address, token or "", ca_bytes(ca), source=source)


def _first(*candidates: tuple[str | None, str]) -> tuple[str, str]:
    return next(((value, where) for value, where in candidates if value), ("", ""))


def unreachable(target: Target, details: str) -> CoorddUnreachable:
    """One line for a person: which address was tried, where it came from, what to do."""
    why = "connection refused" if "refused" in details.lower() else details.splitlines()[0][:160]
    hint = ("start it with `coordd serve`" if target.source.endswith("coordd.addr")
            else f"check {target.source}, or start one with `coordd serve`")
    return CoorddUnreachable(f"cannot reach coordd at {target.address} (address from "
                       f"{target.source}): {why}; {hint}")


def _read(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""


def _spec_and_bundle(spec: JobSpec | str | Path, workdir: str | Path | None,
                     overrides: Overrides | None) -> tuple[JobSpec, str, bytes]:
    if isinstance(spec, JobSpec):
        if overrides:
            spec = parse_spec(overrides.apply(spec.model_dump()), "<sdk>", overrides)
        root = Path(workdir or ".")
        return spec, "<sdk>", bundle.pack(root / spec.workdir, spec.files)
    path = Path(spec)
    parsed = load_job_file(path, overrides)
    return parsed, str(path), bundle.pack(path.parent / parsed.workdir, parsed.files)


@dataclasses.dataclass(frozen=True)
class ExecResult:
    """What `exec` returns: the command's exit code (128+N: killed by signal N) and output."""

    exit_code: int
    stdout: bytes
    stderr: bytes


class AsyncClient:
    def __init__(self, address: str | None = None, token: str | None = None,
                 ca: str | bytes | Path | None = None):
        self.target = target = resolve(address, token, ca)
        # A set of coordd (`a:7070,b:7070`): calls go to one and follow the leader.
        self.addresses = split_addresses(target.address) or [target.address]
        self._metadata = call_metadata(target.token)
        self._connect(self.addresses[0])

    def _connect(self, address: str) -> None:
        self.address = address
        self._channel = open_channel(address, self.target.ca_pem, self.target.insecure, options=[
            ("grpc.max_send_message_length", 80 * 2**20),
            ("grpc.max_receive_message_length", 80 * 2**20)])
        self._stub = jobs_pb2_grpc.JobServiceStub(self._channel)

    async def _follow(self, exc: grpc.aio.AioRpcError, attempt: int) -> bool:
        """After a call failed: on to the leader a standby named, or to the next address
        while a failover may be under way. False: report the error."""
        hint = leader_hint(exc.trailing_metadata())
        tag = dict(exc.trailing_metadata() or ()).get(ERROR_KEY, "")
        alone = len(self.addresses) == 1 and self.address == self.addresses[0]
        if exc.code() != grpc.StatusCode.UNAVAILABLE or tag not in ("", NOT_LEADER) or \
                attempt >= FOLLOW_ATTEMPTS or (alone and not tag):
            return False
        # A leader being chosen (a standby names none yet), starting where we are, or gone
        # from where we were sent (back to the addresses we were given).
        if hint in ("", self.address):
            await asyncio.sleep(min(0.1 * 2 ** attempt, 2.0))
        await self._channel.close()
        self._connect(next_address(self.addresses, self.address, hint))
        return True

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def close(self) -> None:
        await self._channel.close()

    def _error(self, exc: grpc.aio.AioRpcError) -> CoordError:
        """coordd tags the errors it raises (coordinator/edge.py); an untagged UNAVAILABLE
        is gRPC's own: coordd could not be reached."""
        tag = dict(exc.trailing_metadata() or ()).get(ERROR_KEY, "")
        if exc.code() == grpc.StatusCode.UNAVAILABLE and not tag:
            return unreachable(self.target, exc.details() or "")
        return from_status(exc.code(), exc.details(), tag)

    async def _call(self, method: str, request) -> Any:
        """A request message is sent again where the leader is; a stream of them (an
        upload) only once."""
        attempt = 0
        while True:
            try:
                return await getattr(self._stub, method)(request, metadata=self._metadata)
            except grpc.aio.AioRpcError as exc:
                if not isinstance(request, Message) or not await self._follow(exc, attempt):
                    raise self._error(exc) from None
                attempt += 1

    async def _stream(self, method: str, request, wrap=None) -> AsyncIterator[Any]:
        """Follows the leader until the first item has arrived, never after."""
        attempt, started = 0, False
        while True:
            call = getattr(self._stub, method)(request, metadata=self._metadata)
            try:
                async for item in call:
                    started = True
                    yield wrap(item) if wrap else item
                return
            except grpc.aio.AioRpcError as exc:
                if started or not await self._follow(exc, attempt):
                    raise self._error(exc) from None
                attempt += 1
            finally:  # a caller that stops early tells the server now (its exec is killed)
                call.cancel()

    async def submit(self, spec: JobSpec | str | Path, *, workdir: str | Path | None = None,
                     dry_run: bool = False, overrides: Overrides | None = None) -> Job:
        """Submit a job.toml path or a JobSpec (its workdir relative to `workdir`), with
        `overrides` (node count, name, env) applied and validated like the file."""
        parsed, source, data = await asyncio.to_thread(_spec_and_bundle, spec, workdir,
                                                       overrides)
        response = await self._call("SubmitJob", jobs_pb2.SubmitJobRequest(
            spec_json=parsed.to_json(), source=source, bundle=data, dry_run=dry_run,
            overrides=overrides.describe() if overrides else []))
        return Job.from_proto(response.job)

    async def get(self, job: str) -> Job:
        return Job.from_proto(await self._call("GetJob", jobs_pb2.GetJobRequest(job=job)))

    async def jobs(self, include_finished: bool = True, limit: int = 100) -> list[Job]:
        """Newest first; `include_finished=False`: only jobs that have not ended."""
        response = await self._call("ListJobs", jobs_pb2.ListJobsRequest(
            include_finished=include_finished, limit=limit))
        return [Job.from_proto(j) for j in response.jobs]

    async def cancel(self, job: str, reason: str = "") -> Job:
        """Ask coordd to stop the job. A job that already ended: `Conflict`."""
        return Job.from_proto(await self._call("CancelJob", jobs_pb2.CancelJobRequest(
            job=job, reason=reason)))

    async def nodes(self, job: str = "", include_gone: bool = False) -> list[Node]:
        response = await self._call("ListNodes", jobs_pb2.ListNodesRequest(
            job=job, include_gone=include_gone))
        return [Node.from_proto(n) for n in response.nodes]

    async def node_page(self, job: str = "", include_gone: bool = False, limit: int = 50,
                        offset: int = 0) -> NodePage:
        """`limit` nodes from `offset` (oldest first), with the counts per job and state of
        all that match: what a person looks at when there are thousands."""
        return NodePage.from_proto(await self._call("ListNodes", jobs_pb2.ListNodesRequest(
            job=job, include_gone=include_gone, limit=limit, offset=offset, summary=True)))

    async def interrupt_node(self, node_id: str, action: str = "terminate") -> Node:
        """Rehearse a spot interruption on a local node (see `coord debug interrupt`)."""
        return Node.from_proto(await self._call("InterruptNode", jobs_pb2.InterruptNodeRequest(
            node_id=node_id, action=action)))

    # node verbs ------------------------------------------------------------------------
    def exec_stream(self, node: str, command: str | list[str]
                    ) -> AsyncIterator[jobs_pb2.ExecOutput]:
        """Run a command with bash in the node's work directory: its stdout and stderr as
        they come, then a last message with `exit_code` (a list is quoted word by word)."""
        if not isinstance(command, str):
            command = shlex.join(command)
        return self._stream("ExecNode", jobs_pb2.ExecNodeRequest(node_id=node, command=command))

    async def exec(self, node: str, command: str | list[str]) -> ExecResult:
        """Run a command on a node and collect its output and exit code."""
        out, err, code = bytearray(), bytearray(), -1
        async for piece in self.exec_stream(node, command):
            out += piece.stdout
            err += piece.stderr
            if piece.HasField("exit_code"):
                code = piece.exit_code
        return ExecResult(code, bytes(out), bytes(err))

    async def upload(self, node: str, src: str | Path, dst: str) -> jobs_pb2.FileTransferred:
        """Copy a local file to a node. `dst` relative: inside the node's work directory;
        ending in '/': a directory, the file keeps its name. Returns the absolute path."""
        file = await transfer.open_source(src)
        try:
            return await self._call("UploadFile", transfer.upload_chunks(
                file, node, transfer.remote_target(src, dst)))
        finally:  # also when the call fails before it reads the first chunk
            await asyncio.to_thread(file.close)

    async def download(self, node: str, src: str, dst: str | Path = ".") -> Path:
        """Copy a file from a node (`src` relative: inside its work directory) to `dst`, a
        file or an existing directory. Returns the local path."""
        target = transfer.local_target(src, dst)
        await transfer.write_atomically(target, self._stream(
            "DownloadFile", jobs_pb2.DownloadFileRequest(node_id=node, path=src)))
        return target

    def watch(self, job: str, after_seq: int = 0,
              follow: bool = True) -> AsyncIterator[JobEvent]:
        """Events from the start (or after `after_seq`), then live ones until the job ends
        (`follow=False`: only those so far)."""
        return self._stream("WatchJob", jobs_pb2.WatchJobRequest(
            job=job, after_seq=after_seq, follow=follow), JobEvent.from_proto)

    def logs(self, job: str, *, follow: bool = False, node: str = "", rank: int | None = None,
             tail: int = 0) -> AsyncIterator[LogLine]:
        return self._stream("StreamLogs", jobs_pb2.StreamLogsRequest(
            job=job, follow=follow, node_id=node, rank=rank or 0, has_rank=rank is not None,
            tail=tail), LogLine.from_proto)

    async def reformations(self, job: str) -> list[Reformation]:
        """Every re-formation of the job so far, restarts and in-place ones."""
        return reformations([e async for e in self.watch(job, follow=False)])

    async def wait(self, job: str, timeout: float | None = None) -> Job:
        """Block until the job ends; returns its final record."""
        async def until_done() -> Job:
            async for _ in self.watch(job):
                pass
            return await self.get(job)
        return await asyncio.wait_for(until_done(), timeout)


class Client:
    """Blocking form of AsyncClient: each call runs on a private event loop thread."""

    def __init__(self, address: str | None = None, token: str | None = None,
                 ca: str | bytes | Path | None = None):
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self._async = self._run(_make(address, token, ca))
        self.address, self.target = self._async.address, self._async.target

    def _run(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def _iterate(self, agen: AsyncIterator) -> Iterator:
        try:
            while True:
                try:
                    yield self._run(anext(agen))
                except StopAsyncIteration:
                    return
        finally:
            self._run(agen.aclose())

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._run(self._async.close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)

    def submit(self, spec, *, workdir=None, dry_run=False, overrides=None) -> Job:
        return self._run(self._async.submit(spec, workdir=workdir, dry_run=dry_run,
                                            overrides=overrides))

    def get(self, job: str) -> Job:
        return self._run(self._async.get(job))

    def jobs(self, include_finished: bool = True, limit: int = 100) -> list[Job]:
        return self._run(self._async.jobs(include_finished, limit))

    def cancel(self, job: str, reason: str = "") -> Job:
        return self._run(self._async.cancel(job, reason))

    def nodes(self, job: str = "", include_gone: bool = False) -> list[Node]:
        return self._run(self._async.nodes(job, include_gone))

    def node_page(self, job: str = "", include_gone: bool = False, limit: int = 50,
                  offset: int = 0) -> NodePage:
        return self._run(self._async.node_page(job, include_gone, limit, offset))

    def watch(self, job: str, after_seq: int = 0, follow: bool = True) -> Iterator[JobEvent]:
        return self._iterate(self._async.watch(job, after_seq, follow))

    def logs(self, job: str, **kwargs) -> Iterator[LogLine]:
        return self._iterate(self._async.logs(job, **kwargs))

    def reformations(self, job: str) -> list[Reformation]:
        return self._run(self._async.reformations(job))

    def wait(self, job: str, timeout: float | None = None) -> Job:
        return self._run(self._async.wait(job, timeout))

    def interrupt_node(self, node_id: str, action: str = "terminate") -> Node:
        return self._run(self._async.interrupt_node(node_id, action))

    def exec_stream(self, node: str, command: str | list[str]) -> Iterator[jobs_pb2.ExecOutput]:
        return self._iterate(self._async.exec_stream(node, command))

    def exec(self, node: str, command: str | list[str]) -> ExecResult:
        return self._run(self._async.exec(node, command))

    def upload(self, node: str, src: str | Path, dst: str) -> jobs_pb2.FileTransferred:
        return self._run(self._async.upload(node, src, dst))

    def download(self, node: str, src: str, dst: str | Path = ".") -> Path:
        return self._run(self._async.download(node, src, dst))


async def _make(address: str | None, token: str | None, ca) -> AsyncClient:
    return AsyncClient(address, token, ca)


__all__ = ["AsyncClient", "Client", "CoordError", "ExecResult", "Job", "JobEvent", "JobState",
           "LogLine", "LogStream", "Node", "NodeState", "Overrides", "Target", "resolve"]
