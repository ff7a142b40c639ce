"""coordd's gRPC edge (coordinator/edge.py) on a real loopback server: typed errors become their
status mid-stream too, bytes that are no message get INVALID_ARGUMENT, and a streamed message
passes no generator of the edge's on its way in or out."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import grpc
import pytest

from contract.errors import ERROR_KEY, NotFound
from coordinator import edge
from coordinator.edge import DecodeGuard, rpc

EDGE = str(Path(edge.__file__).resolve())
SERVICE = "test.Edge"


def edge_frames() -> int:
    """Frames of the edge's code driving the caller (a generator is resumed by its consumer)."""
    frame, count = sys._getframe(1), 0
    while frame is not None:
        count += frame.f_code.co_filename == EDGE
        frame = frame.f_back
    return count


def parse(data: bytes) -> str:
    return data.decode()  # bytes that are no UTF-8 are no message here


class Servicer:
    def __init__(self):
        self.seen: list[tuple[str, int]] = []  # (what, edge frames around the handler then)

    @rpc
    async def Echo(self, requests, context):
        self.seen.append((type(requests).__module__, edge_frames()))
        async for text in requests:
            if text == "missing":
                raise NotFound("no such thing")
            if text == "bug":
                raise RuntimeError("a bug")
            yield text.encode()
            self.seen.append(("yield", edge_frames()))


async def serve(servicer: Servicer, messages: list[bytes]) -> tuple[list[bytes], grpc.RpcError | None]:
    server = grpc.aio.server(interceptors=[DecodeGuard()])
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, {
        "Echo": grpc.stream_stream_rpc_method_handler(
            servicer.Echo, request_deserializer=parse, response_serializer=bytes)}),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    got, error = [], None
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            call = channel.stream_stream(f"/{SERVICE}/Echo")(iter(messages))
            try:
                async for reply in call:
                    got.append(reply)
            except grpc.RpcError as exc:
                error = exc
                error.trailers = await call.trailing_metadata()
    finally:
        await server.stop(None)
    return got, error


def run(messages: list[bytes]) -> tuple[Servicer, list[bytes], grpc.RpcError | None]:
    servicer = Servicer()
    got, error = asyncio.run(serve(servicer, messages))
    return servicer, got, error


def test_a_streamed_message_passes_no_generator_of_the_edge():
    servicer, got, error = run([b"a", b"b"])
    assert error is None and got == [b"a", b"b"]
    iterator, *yields = servicer.seen
    assert iterator[0].startswith("grpc")  # gRPC's own request iterator, not a wrapper
    # the one coroutine that writes and maps errors: no generator re-yields each message
    assert all(frames == 1 for _, frames in yields), servicer.seen


@pytest.mark.parametrize("bad,code,tag", [
    (b"missing", grpc.StatusCode.NOT_FOUND, "NotFound"),
    (b"bug", grpc.StatusCode.INTERNAL, None),
    (b"\xff\xfe", grpc.StatusCode.INVALID_ARGUMENT, "InvalidSpec")])
def test_an_error_mid_stream_becomes_its_status_after_what_was_sent(bad, code, tag):
    _, got, error = run([b"a", bad, b"c"])
    assert got == [b"a"]
    assert error is not None and error.code() == code
    assert dict(error.trailers).get(ERROR_KEY) == tag
