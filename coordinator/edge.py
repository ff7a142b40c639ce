"""The one place where coord's typed errors become gRPC status codes."""

from __future__ import annotations

import functools
import inspect
import time

import grpc
import structlog

from contract.errors import ERROR_KEY, CoordError, InvalidSpec, error_tag

log = structlog.get_logger("coordinator.edge")
# Status details travel in trailers, which clients cap (8 KiB by default): a longer message
# (an error quoting a huge field) would reach the caller as a transport error instead.
MAX_DETAIL = 4000


def rpc(method):
    """Map CoordError to its status code and anything unexpected to INTERNAL (logged, not
    fatal: one bad request never takes the daemon down). Records latency per method.

    A streaming method's messages are written through the context (gRPC's reader/writer
    API) by the one coroutine that maps its errors: no generator stands between it and the
    wire, so a message costs no more than it would unwrapped."""
    name = method.__name__

    async def fail(context, exc: Exception) -> None:
        if isinstance(exc, CoordError):
            await context.abort(exc.code, str(exc)[:MAX_DETAIL], ((ERROR_KEY, error_tag(exc)),))
        log.exception("rpc.internal_error", method=name)
        await context.abort(grpc.StatusCode.INTERNAL,
                            f"internal error in {name}: {exc!r}"[:MAX_DETAIL])

    if inspect.isasyncgenfunction(method):
        @functools.wraps(method)
        async def stream(self, request, context):
            writing = False
            try:
                async for item in method(self, request, context):
                    writing = True
                    await context.write(item)
                    writing = False
            except grpc.aio.AbortError:
                raise
            except Exception as exc:  # noqa: BLE001 - the edge maps everything
                if writing:  # the stream itself failed (its caller left): gRPC's to handle
                    raise
                await fail(context, exc)
        return stream

    @functools.wraps(method)
    async def unary(self, request, context):
        started = time.perf_counter()
        try:
            return await method(self, request, context)
        except grpc.aio.AbortError:
            raise
        except Exception as exc:  # noqa: BLE001 - the edge maps everything
            await fail(context, exc)
        finally:
            self.metrics.rpc_latency.labels(name).observe(time.perf_counter() - started)
    return unary


class _Malformed:
    """Stands in for a request whose bytes did not parse."""

    def __init__(self, error: Exception):
        self.error = error


def _refusal(error: Exception) -> InvalidSpec:
    return InvalidSpec(f"request does not parse: {str(error)[:200]}")


def _tolerant(deserialize):
    """A unary request is parsed before its handler runs: a bad one reaches it marked."""
    def parse(data: bytes):
        try:
            return deserialize(data)
        except Exception as exc:  # noqa: BLE001 - protobuf raises several kinds on bad bytes
            return _Malformed(exc)
    return parse


def _refusing(deserialize):
    """A streamed request is parsed as the handler reads it: a bad one raises there, as
    InvalidSpec, which the handler's edge maps like any other (no wrapper per message)."""
    def parse(data: bytes):
        try:
            return deserialize(data)
        except Exception as exc:  # noqa: BLE001 - protobuf raises several kinds on bad bytes
            raise _refusal(exc) from exc
    return parse


class DecodeGuard(grpc.aio.ServerInterceptor):
    """Bytes that are not the method's request message get INVALID_ARGUMENT (gRPC's own answer
    would be INTERNAL, which means a bug in coordd, not in the caller). Nothing is wrapped per
    message: a unary request is checked once before its handler runs; a streamed one raises
    InvalidSpec as the handler reads it, and the handler's `rpc` edge maps it."""

    async def intercept_service(self, continuation, details: grpc.HandlerCallDetails):
        handler = await continuation(details)
        if handler is None or handler.request_deserializer is None:
            return handler
        if handler.response_streaming and inspect.isasyncgenfunction(
                handler.unary_stream or handler.stream_stream):
            raise TypeError(f"{details.method}: a streaming handler must be wrapped with "
                            "coordinator.edge.rpc")
        if handler.request_streaming:
            return rebuild(handler, handler.stream_unary or handler.stream_stream,
                           _refusing(handler.request_deserializer))
        behavior = handler.unary_unary or handler.unary_stream

        async def call(request, context):
            if isinstance(request, _Malformed):
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                    str(_refusal(request.error)))
            return await behavior(request, context)
        return rebuild(handler, call, _tolerant(handler.request_deserializer))


_KINDS = {
    (False, False): grpc.unary_unary_rpc_method_handler,
    (False, True): grpc.unary_stream_rpc_method_handler,
    (True, False): grpc.stream_unary_rpc_method_handler,
    (True, True): grpc.stream_stream_rpc_method_handler,
}


def rebuild(handler: grpc.RpcMethodHandler, behavior,
            request_deserializer=None) -> grpc.RpcMethodHandler:
    """`handler`'s kind with another behavior (and optionally another deserializer)."""
    kind = _KINDS[(handler.request_streaming, handler.response_streaming)]
    return kind(behavior, request_deserializer=request_deserializer or
                handler.request_deserializer, response_serializer=handler.response_serializer)
