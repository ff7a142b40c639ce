"""The shared secret: created in the state directory at first start, required on every RPC.

One server interceptor checks it, so no handler can forget to.
"""

from __future__ import annotations

import hmac
import os
import secrets
from pathlib import Path

import grpc

METADATA_KEY = "authorization"


def load_or_create_token(path: Path) -> str:
    """The token file is created once, readable by its owner only."""
    if path.exists():
        return path.read_text().strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    token = secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(token + "\n")
    return token


def call_metadata(token: str) -> tuple[tuple[str, str], ...]:
    return ((METADATA_KEY, f"Bearer {token}"),)


class TokenInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, token: str):
        self._expected = f"Bearer {token}".encode()

    def _authorized(self, details: grpc.HandlerCallDetails) -> bool:
        for key, value in details.invocation_metadata or ():
            if key == METADATA_KEY:
                given = value.encode() if isinstance(value, str) else value
                return hmac.compare_digest(given, self._expected)
        return False

    async def intercept_service(self, continuation, details: grpc.HandlerCallDetails):
        handler = await continuation(details)
        if handler is None or self._authorized(details):
            return handler
        return _refusing(handler)


def _refusing(handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    async def deny(_request, context: grpc.aio.ServicerContext):
        await context.abort(grpc.StatusCode.UNAUTHENTICATED,
                            "missing or wrong token: set COORD_TOKEN (see `coord --help`)")

    async def deny_stream(_request, context: grpc.aio.ServicerContext):
        await deny(_request, context)
        yield  # pragma: no cover - abort raises

    kinds = {
        (False, False): grpc.unary_unary_rpc_method_handler,
        (False, True): grpc.unary_stream_rpc_method_handler,
        (True, False): grpc.stream_unary_rpc_method_handler,
        (True, True): grpc.stream_stream_rpc_method_handler,
    }
    key = (handler.request_streaming, handler.response_streaming)
    return kinds[key](deny_stream if handler.response_streaming else deny,
                      request_deserializer=handler.request_deserializer,
                      response_serializer=handler.response_serializer)
