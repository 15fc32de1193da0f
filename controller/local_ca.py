"""A throwaway certificate authority for a local cluster (`dcnr-orchestrator up`).

`up` is the path people try first, so it is TLS by default; nobody should have to run
openssl for it. `ensure(directory)` keeps, in `directory/tls/`:

    ca.pem, ca-key.pem          the CA (ten years; its key never leaves the directory)
    server.pem, server-key.pem  the orchestrator's certificate for localhost, 127.0.0.1, ::1

and reuses them across runs while they are valid for at least a day more and name the
hosts asked for; otherwise it issues new ones (a new CA only when the CA itself expires or
its files are broken). Keys are written readable by their owner only.

`issue` signs any certificate with a CA: tests use it for client certificates (mutual TLS)
and to rotate a server's certificate under it.
"""

from __future__ import annotations

import dataclasses
import datetime
import ipaddress
import os
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from api import identity

LOCAL_HOSTS: tuple[str, ...] = ("localhost", "127.0.0.1", "::1")
CA_DAYS = 3650
LEAF_DAYS = 365
#: A certificate with less than this left is replaced at the next `ensure`.
RENEW_BEFORE = datetime.timedelta(days=1)


@dataclasses.dataclass(frozen=True, slots=True)
class Paths:
    ca: Path
    ca_key: Path
    cert: Path
    key: Path


@dataclasses.dataclass(frozen=True, slots=True)
class Authority:
    certificate: x509.Certificate
    key: ec.EllipticCurvePrivateKey


def paths(directory: Path) -> Paths:
    tls = directory / "tls"
    return Paths(tls / "ca.pem", tls / "ca-key.pem", tls / "server.pem", tls / "server-key.pem")


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _write(path: Path, data: bytes, *, private: bool) -> None:
    """Write beside and rename, so a reader (a reloading server) never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if private else 0o644)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(temporary, path)


def cert_pem(certificate: x509.Certificate) -> bytes:
    return certificate.public_bytes(serialization.Encoding.PEM)


def new_authority(common_name: str = "dcnr local CA", *, days: int = CA_DAYS) -> Authority:
    key = identity.generate_key()
    now = _now()
    certificate = identity.self_signed_ca(
        key,
        common_name,
        now - datetime.timedelta(minutes=5),
        now + datetime.timedelta(days=days),
    )
    return Authority(certificate, key)


def _san(hosts: Sequence[str]) -> x509.SubjectAlternativeName:
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return x509.SubjectAlternativeName(names)


def issue(
    authority: Authority,
    common_name: str,
    *,
    hosts: Sequence[str] = (),
    client: bool = False,
    days: int = LEAF_DAYS,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A new key and a certificate for it signed by `authority`: a server certificate for
    `hosts`, or a client certificate (`client=True`)."""
    key = identity.generate_key()
    now = _now()
    usage = ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(authority.certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(authority.key.public_key()), False
        )
    )
    if hosts:
        builder = builder.add_extension(_san(hosts), critical=False)
    return builder.sign(authority.key, hashes.SHA256()), key


def write_pair(
    certificate: x509.Certificate, key: ec.EllipticCurvePrivateKey, cert_path: Path, key_path: Path
) -> None:
    """Key first, then certificate: a server reloading in between sees a key that does not
    match its certificate and keeps the old pair until both are there."""
    _write(key_path, identity.key_pem(key), private=True)
    _write(cert_path, cert_pem(certificate), private=False)


def _load_authority(found: Paths) -> Authority | None:
    try:
        certificate = x509.load_pem_x509_certificate(found.ca.read_bytes())
        key = serialization.load_pem_private_key(found.ca_key.read_bytes(), password=None)
    except (OSError, ValueError, TypeError):
        return None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        return None
    if certificate.not_valid_after_utc - _now() < datetime.timedelta(days=30):
        return None
    return Authority(certificate, key)


def _server_usable(found: Paths, authority: Authority, hosts: Sequence[str]) -> bool:
    try:
        certificate = x509.load_pem_x509_certificate(found.cert.read_bytes())
        serialization.load_pem_private_key(found.key.read_bytes(), password=None)
    except (OSError, ValueError, TypeError):
        return False
    try:  # a new CA has the old one's name: check the signature, not the issuer's name
        certificate.verify_directly_issued_by(authority.certificate)
    except (ValueError, TypeError, InvalidSignature):
        return False
    if certificate.not_valid_after_utc - _now() < RENEW_BEFORE:
        return False
    try:
        named = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return False
    return named.value == _san(hosts)


def ensure(directory: Path, *, hosts: Sequence[str] = LOCAL_HOSTS) -> Paths:
    """The CA and the server certificate under `directory/tls/`, created or renewed as the
    module docstring says. Blocking (key generation, files): call it off the event loop."""
    found = paths(directory)
    authority = _load_authority(found)
    if authority is None:
        authority = new_authority()
        write_pair(authority.certificate, authority.key, found.ca, found.ca_key)
    if not _server_usable(found, authority, hosts):
        certificate, key = issue(authority, "dcnr-orchestrator", hosts=hosts)
        write_pair(certificate, key, found.cert, found.key)
    return found
