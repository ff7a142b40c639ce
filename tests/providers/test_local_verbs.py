"""The local provider's node verbs on a real work directory and real processes, directly
and through coordd's RPCs."""

from __future__ import annotations

import asyncio
import os
import signal
import textwrap
import time
from pathlib import Path

import pytest

from contract.errors import InvalidSpec, NotFound, ResourceExhausted
from contract.states import JobState
from coordinator.client.sdk import AsyncClient
from coordinator.providers.localio import download_local, exec_local, upload_local
from coordinator.providers.nodeio import merged
from tests.integration.harness import wait_for
from tests.net import free_port


async def collect(pieces):
    out, err, codes = b"", b"", []
    async for piece in pieces:
        out, err = out + piece.stdout, err + piece.stderr
        if piece.exit_code is not None:
            codes.append(piece.exit_code)
    return out, err, codes


async def chunks(*parts: bytes):
    for part in parts:
        yield part


async def test_exec_streams_both_outputs_in_the_work_dir_and_keeps_the_exit_code(tmp_path):
    out, err, codes = await collect(exec_local("n1", str(tmp_path),
                                               "echo out; echo err >&2; pwd; exit 7"))
    assert (out, err, codes) == (f"out\n{tmp_path}\n".encode(), b"err\n", [7])
    _, _, codes = await collect(exec_local("n1", str(tmp_path), "kill -9 $$"))
    assert codes == [128 + 9]


async def test_upload_then_download_round_trips_relative_to_the_work_dir(tmp_path):
    payload = [os.urandom(1 << 20), os.urandom(777)]
    path = await upload_local("n1", str(tmp_path), "deep/er/file.bin", chunks(*payload))
    assert path == str(tmp_path / "deep" / "er" / "file.bin")
    back = b"".join([c async for c in download_local("n1", str(tmp_path), "deep/er/file.bin")])
    assert back == b"".join(payload)


async def test_path_errors_name_the_node_and_the_path(tmp_path):
    with pytest.raises(NotFound, match=r"node n1: .*/nope\.txt: no such file"):
        [c async for c in download_local("n1", str(tmp_path), "nope.txt")]
    with pytest.raises(InvalidSpec, match=r"node n1: .*: is a directory"):
        [c async for c in download_local("n1", str(tmp_path), ".")]
    with pytest.raises(InvalidSpec, match="field 'path'"):
        await upload_local("n1", str(tmp_path), "", chunks(b"x"))


def running(marker: str) -> list[str]:
    """Processes whose command line carries `marker`."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and marker.encode() in (entry / "cmdline").read_bytes():
                found.append(entry.name)
        except OSError:
            pass
    return found


def open_pipes(pid: int) -> int:
    fds = Path(f"/proc/{pid}/fd")
    return sum(1 for fd in fds.iterdir() if os.readlink(fd).startswith("pipe:"))


async def test_an_abandoned_exec_with_heavy_output_closes_at_once_and_kills_the_command(
        tmp_path):
    marker = f"coord-abandoned-{os.getpid()}-direct"
    pieces = exec_local("n1", str(tmp_path), f"yes {marker} | head -c 500M")
    assert marker.encode() in (await anext(pieces)).stdout
    await asyncio.sleep(0.5)  # the pipes fill up while nobody reads
    await asyncio.wait_for(pieces.aclose(), 10)
    assert running(marker) == []


async def test_a_failing_output_stream_ends_the_merged_stream_with_its_error():
    class Broken:
        async def read(self, n: int = -1) -> bytes:
            raise ConnectionResetError("the connection broke")

    class Endless:
        async def read(self, n: int = -1) -> bytes:
            await asyncio.sleep(0.01)
            return b"x"

    with pytest.raises(ConnectionResetError):
        async for _ in merged(Endless(), Broken()):
            pass


async def test_an_aborted_upload_leaves_neither_the_file_nor_a_partial_one(tmp_path):
    async def aborted():
        yield os.urandom(1 << 20)
        raise ConnectionResetError("the client went away")

    (tmp_path / "kept.bin").write_bytes(b"old")
    with pytest.raises(ConnectionResetError):
        await upload_local("n1", str(tmp_path), "kept.bin", aborted())
    assert (tmp_path / "kept.bin").read_bytes() == b"old"  # untouched, not truncated
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kept.bin"]


async def test_a_full_disk_is_a_typed_error_naming_the_node_and_the_path(tmp_path):
    (tmp_path / "big.bin.partial").symlink_to("/dev/full")  # every write: ENOSPC
    with pytest.raises(ResourceExhausted, match=r"node n1: .*/big\.bin: No space left"):
        await upload_local("n1", str(tmp_path), "big.bin", chunks(os.urandom(1 << 20)))
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(InvalidSpec, match=r"node n1: .*: is a directory"):
        await upload_local("n1", str(tmp_path), ".", chunks(b"x"))


async def test_sdk_upload_closes_the_local_file_when_the_call_fails(tmp_path):
    source = tmp_path / "payload.bin"
    source.write_bytes(b"data")
    client = AsyncClient(f"127.0.0.1:{free_port()}", "token")  # nobody listens there
    try:
        with pytest.raises(Exception):
            await asyncio.wait_for(client.upload("n1", source, "x.bin"), 30)
    finally:
        await client.close()
    assert not [fd for fd in os.listdir("/proc/self/fd")
                if os.path.realpath(f"/proc/self/fd/{fd}") == str(source)]


@pytest.mark.timeout(120)
def test_a_client_that_abandons_a_heavy_exec_over_rpc_leaves_coordd_healthy(coordd, client,
                                                                             tmp_path):
    job = tmp_path / "job.toml"
    job.write_text(textwrap.dedent("""
        name = "idle"
        run = "sleep 600"
        [nodes]
        count = 1
    """))
    record = client.submit(job)
    wait_for(lambda: client.get(record.id).state == JobState.RUNNING, 60,
             interval=0.2, what="the job to run")
    node = client.nodes(record.id)[0].id
    pipes = open_pipes(coordd.process.pid)
    marker = f"coord-abandoned-{os.getpid()}-rpc"
    stream = client.exec_stream(node, f"yes {marker} | head -c 500M")
    assert marker.encode() in next(stream).stdout
    time.sleep(1)  # coordd's side fills up while the client reads nothing
    stream.close()  # the client goes away mid-stream
    wait_for(lambda: running(marker) == [], 15, what="the abandoned command to be killed")
    wait_for(lambda: open_pipes(coordd.process.pid) <= pipes, 5,  # now, not at collection
             what="coordd to let go of the command's pipes")
    ran = client.exec(node, "echo still here")
    assert (ran.exit_code, ran.stdout) == (0, b"still here\n")
    client.cancel(record.id)
    coordd.process.send_signal(signal.SIGTERM)  # shutdown is not held up by the old stream
    assert coordd.process.wait(30) == 0
    assert "Task was destroyed but it is pending" not in coordd.log_path.read_text()
