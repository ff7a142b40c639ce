"""How `coord`, the SDK and agents dial coordd: TLS, trusting coordd's CA (or the system's
roots when none is given), unless plaintext was asked for explicitly; and the call metadata
that carries their bearer token (coordinator/auth.py checks it)."""

from __future__ import annotations

from pathlib import Path

import grpc

from contract.errors import InvalidSpec

PEM_MARK = "-----BEGIN"
METADATA_KEY = "authorization"


def ca_bytes(ca: str | bytes | Path | None) -> bytes | None:
    """`ca` as PEM bytes: PEM text itself, or the path of a PEM file."""
    if ca is None or ca == "":
        return None
    if isinstance(ca, bytes):
        return ca
    if isinstance(ca, str) and ca.lstrip().startswith(PEM_MARK):
        return ca.encode()
    try:
        return Path(ca).expanduser().read_bytes()
    except OSError as exc:
        raise InvalidSpec(f"CA certificate {ca}: {exc.strerror or exc}") from None


def open_channel(address: str, ca_pem: bytes | None, insecure: bool,
                 options: list[tuple[str, int | str]]) -> grpc.aio.Channel:
    if insecure:
        return grpc.aio.insecure_channel(address, options=options)
    credentials = grpc.ssl_channel_credentials(root_certificates=ca_pem)
    return grpc.aio.secure_channel(address, credentials, options=options)


def truthy(value: str | bool | None) -> bool:
    return value is True or str(value).strip().lower() in ("1", "true", "yes")


def call_metadata(token: str) -> tuple[tuple[str, str], ...]:
    return ((METADATA_KEY, f"Bearer {token}"),)
