"""The one place where coord's typed errors become gRPC status codes."""

from __future__ import annotations

import functools
import inspect
import time

import grpc
import structlog

from coordinator.errors import CoordError

log = structlog.get_logger("coordinator.edge")


def rpc(method):
    """Map CoordError to its status code and anything unexpected to INTERNAL (logged, not
    fatal: one bad request never takes the daemon down). Records latency per method."""
    name = method.__name__

    async def fail(context, exc: Exception) -> None:
        if isinstance(exc, CoordError):
            await context.abort(exc.code, str(exc))
        log.exception("rpc.internal_error", method=name)
        await context.abort(grpc.StatusCode.INTERNAL, f"internal error in {name}: {exc!r}")

    if inspect.isasyncgenfunction(method):
        @functools.wraps(method)
        async def stream(self, request, context):
            try:
                async for item in method(self, request, context):
                    yield item
            except (CoordError, Exception) as exc:  # noqa: BLE001 - the edge maps everything
                if isinstance(exc, grpc.aio.AbortError):
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
