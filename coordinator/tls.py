"""coordd's TLS material: a private CA and a server certificate generated into the state
directory at first start, or the user's own files.

The CA's key never leaves the state directory. Clients and agents trust `tls/ca.pem`. The
server certificate is re-issued (by the same CA) whenever the names it must cover change, so
changing `listen` or `tls_extra_names` needs no manual step.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import ipaddress
import os
import socket
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

VALID_DAYS = 3650
WILDCARD_HOSTS = {"", "0.0.0.0", "::", "[::]"}


@dataclasses.dataclass(frozen=True)
class TlsFiles:
    key_pem: bytes
    cert_pem: bytes
    ca_pem: bytes


def server_names(listen_host: str, advertise_host: str, extra: list[str]) -> list[str]:
    """Every name a client may dial: loopback, this host's names when listening on all
    interfaces, the listen and advertised hosts, and the configured extras."""
    names = ["127.0.0.1", "localhost", listen_host.strip("[]"), advertise_host.strip("[]"),
             *extra]
    if listen_host in WILDCARD_HOSTS:
        names += [socket.gethostname(), socket.getfqdn()]
    return sorted({n for n in names if n and n not in WILDCARD_HOSTS})


def load_user_files(cert: Path, key: Path, ca: Path | None) -> TlsFiles:
    """A certificate the user brought; `ca` defaults to the certificate chain itself."""
    cert_pem = cert.read_bytes()
    return TlsFiles(key.read_bytes(), cert_pem, ca.read_bytes() if ca else cert_pem)


def ensure_generated(tls_dir: Path, names: list[str]) -> TlsFiles:
    """The CA (made once) and a server certificate for `names` (re-issued if they changed)."""
    tls_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    ca_key_path, ca_path = tls_dir / "ca.key", tls_dir / "ca.pem"
    key_path, cert_path = tls_dir / "server.key", tls_dir / "server.pem"
    if not ca_path.exists():
        ca_key = ec.generate_private_key(ec.SECP256R1())
        write_file(ca_key_path, _key_pem(ca_key), 0o600)
        write_file(ca_path, _ca_cert(ca_key).public_bytes(serialization.Encoding.PEM), 0o644)
    ca_key = serialization.load_pem_private_key(ca_key_path.read_bytes(), None)
    ca_cert = x509.load_pem_x509_certificate(ca_path.read_bytes())
    if not cert_path.exists() or _names_of(cert_path) != set(names):
        key = ec.generate_private_key(ec.SECP256R1())
        cert = _server_cert(key, ca_key, ca_cert, names)
        write_file(key_path, _key_pem(key), 0o600)
        write_file(cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    return TlsFiles(key_path.read_bytes(), cert_path.read_bytes(), ca_path.read_bytes())


def write_file(path: Path, data: bytes, mode: int) -> None:
    """Atomically, with the final mode from the start (a secret is never briefly readable)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    tmp.replace(path)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _names_of(cert_path: Path) -> set[str]:
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return {str(v) for v in sans.get_values_for_type(x509.IPAddress)} | set(
        sans.get_values_for_type(x509.DNSName))


def _san(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


def _builder(subject: str, issuer: x509.Name, public_key) -> x509.CertificateBuilder:
    now = dt.datetime.now(dt.timezone.utc)
    return (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
            .issuer_name(issuer).public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=VALID_DAYS)))


def _ca_cert(key: ec.EllipticCurvePrivateKey) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "coordd CA")])
    return (_builder("coordd CA", name, key.public_key())
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False,
                                         False), critical=True)
            .sign(key, hashes.SHA256()))


def _server_cert(key, ca_key, ca_cert: x509.Certificate, names: list[str]) -> x509.Certificate:
    return (_builder("coordd", ca_cert.subject, key.public_key())
            .add_extension(x509.SubjectAlternativeName([_san(n) for n in names]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
