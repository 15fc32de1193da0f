"""api/tls.py over real loopback sockets: a grpc.aio server with reloading credentials, and
clients that are gRPC channels or raw `ssl` sockets (to read the certificate a handshake
presents)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from grpc import aio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from api import tls
from controller import local_ca
from tests.support import tls as tls_support


@pytest.fixture
def pki(tmp_path: Path) -> tls_support.Pki:
    return tls_support.Pki.create(tmp_path)


def _ec_key(path: Path) -> ec.EllipticCurvePrivateKey:
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return key


@dataclass
class Served:
    address: str
    credentials: tls.ReloadingServerCredentials | None


async def _serve(files: tls.ServerFiles | None) -> tuple[aio.Server, Served]:
    server = aio.server()
    health_pb2_grpc.add_HealthServicer_to_server(
        health.aio.HealthServicer(),  # type: ignore[attr-defined]
        server,
    )
    credentials = tls.ReloadingServerCredentials(files) if files else None
    if credentials is None:
        port = server.add_insecure_port("127.0.0.1:0")
    else:
        port = server.add_secure_port("127.0.0.1:0", credentials.credentials())
    await server.start()
    return server, Served(f"127.0.0.1:{port}", credentials)


@pytest.fixture
async def tls_server(pki: tls_support.Pki) -> AsyncIterator[Served]:
    server, served = await _serve(tls.ServerFiles(pki.paths.cert, pki.paths.key))
    yield served
    await server.stop(None)


async def _check(address: str, credentials: grpc.ChannelCredentials | None, **kw: object) -> int:
    options = list(kw.get("options", []))  # type: ignore[call-overload]
    channel = (
        aio.secure_channel(address, credentials, options)
        if credentials is not None
        else aio.insecure_channel(address, options)
    )
    async with channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=10
        )
    return int(reply.status)


async def _refused(address: str, credentials: grpc.ChannelCredentials | None) -> aio.AioRpcError:
    with pytest.raises(aio.AioRpcError) as caught:
        await _check(address, credentials)
    return caught.value


async def _peer_serial(address: str, ca: Path) -> int:
    return await asyncio.to_thread(tls_support.peer_serial, address, ca)


# -- reading files ----------------------------------------------------------------------------


def _broken(pki: tls_support.Pki, what: str) -> tls.ServerFiles:
    cert, key = pki.paths.cert, pki.paths.key
    other_cert, other_key, _ = pki.issue("other")
    text = pki.root / "text.pem"
    text.write_text("hello\n")
    encrypted = pki.root / "encrypted-key.pem"
    encrypted.write_bytes(
        _ec_key(other_key).private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"pw"),
        )
    )
    return {
        "missing cert": tls.ServerFiles(pki.root / "absent.pem", key),
        "cert is a directory": tls.ServerFiles(pki.root, key),
        "cert not PEM": tls.ServerFiles(text, key),
        "key not PEM": tls.ServerFiles(cert, text),
        "key encrypted": tls.ServerFiles(other_cert, encrypted),
        "key of another cert": tls.ServerFiles(cert, other_key),
        "client CA not PEM": tls.ServerFiles(cert, key, client_ca=text),
    }[what]


@pytest.mark.parametrize(
    ("what", "flag", "says"),
    [
        ("missing cert", "--tls-cert", "no such file"),
        ("cert is a directory", "--tls-cert", "is a directory"),
        ("cert not PEM", "--tls-cert", "not a PEM certificate"),
        ("key not PEM", "--tls-key", "not a PEM private key"),
        ("key encrypted", "--tls-key", "encrypted"),
        ("key of another cert", "--tls-key", "does not belong to the certificate"),
        ("client CA not PEM", "--tls-client-ca", "not a PEM certificate"),
    ],
)
def test_a_bad_file_is_an_error_naming_the_flag_and_path(
    pki: tls_support.Pki, what: str, flag: str, says: str
) -> None:
    files = _broken(pki, what)
    with pytest.raises(tls.TlsError) as caught:
        tls.ReloadingServerCredentials(files)
    message = str(caught.value)
    assert message.startswith(flag + " "), message
    assert says in message
    path = {"--tls-cert": files.cert, "--tls-key": files.key}.get(flag, files.client_ca)
    assert str(path) in message


def test_client_flags_are_named_as_the_caller_spells_them(pki: tls_support.Pki) -> None:
    flags = tls.Flags(cert="tls-cert", key="tls-key", ca="tls-ca")
    with pytest.raises(tls.TlsError, match=r"^tls-ca /nowhere/ca\.pem: no such file"):
        tls.ClientFiles(ca=Path("/nowhere/ca.pem"), flags=flags).credentials()
    with pytest.raises(tls.TlsError, match=r"^tls-cert needs tls-key"):
        tls.ClientFiles(ca=pki.paths.ca, cert=pki.paths.cert, flags=flags).credentials()
    assert tls.ClientFiles(server_name="dcnr.example").options() == [
        (tls.TARGET_NAME_OVERRIDE, "dcnr.example")
    ]


# -- handshakes -------------------------------------------------------------------------------


async def test_a_tls_client_is_served_and_a_plaintext_one_told_to_use_tls(
    pki: tls_support.Pki, tls_server: Served
) -> None:
    trusted = tls.ClientFiles(ca=pki.paths.ca).credentials()
    assert await _check(tls_server.address, trusted) == health_pb2.HealthCheckResponse.SERVING
    plain = await _refused(tls_server.address, None)
    hint = tls.describe_failure(plain.code(), plain.details() or "", tls=False)
    assert "require TLS" in (hint or ""), plain.details()


async def test_an_untrusted_or_misnamed_certificate_is_refused_with_a_hint(
    pki: tls_support.Pki, tls_server: Served
) -> None:
    stranger = local_ca.new_authority("someone else")
    other_ca = pki.root / "stranger.pem"
    other_ca.write_bytes(local_ca.cert_pem(stranger.certificate))
    untrusted = await _refused(tls_server.address, tls.ClientFiles(ca=other_ca).credentials())
    hint = tls.describe_failure(untrusted.code(), untrusted.details() or "", tls=True)
    assert "not signed by the CA" in (hint or ""), untrusted.details()

    misnamed = tls.ClientFiles(ca=pki.paths.ca, server_name="dcnr.example.org")
    channel = aio.secure_channel(tls_server.address, misnamed.credentials(), misnamed.options())
    async with channel:
        with pytest.raises(aio.AioRpcError) as caught:
            await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=10
            )
    hint = tls.describe_failure(caught.value.code(), caught.value.details() or "", tls=True)
    assert "tls-server-name" in (hint or ""), caught.value.details()


async def test_a_tls_client_at_a_plaintext_server_is_told_so(pki: tls_support.Pki) -> None:
    server, served = await _serve(None)
    try:
        refused = await _refused(served.address, tls.ClientFiles(ca=pki.paths.ca).credentials())
    finally:
        await server.stop(None)
    hint = tls.describe_failure(refused.code(), refused.details() or "", tls=True)
    assert "does not speak TLS" in (hint or ""), refused.details()


async def test_mutual_tls_refuses_a_client_without_a_certificate_from_the_ca(
    pki: tls_support.Pki,
) -> None:
    server, served = await _serve(
        tls.ServerFiles(pki.paths.cert, pki.paths.key, client_ca=pki.paths.ca)
    )
    try:
        cert, key, _ = pki.issue("agent-1", client=True)
        with_cert = tls.ClientFiles(ca=pki.paths.ca, cert=cert, key=key).credentials()
        assert await _check(served.address, with_cert) == health_pb2.HealthCheckResponse.SERVING
        without = await _refused(served.address, tls.ClientFiles(ca=pki.paths.ca).credentials())
        assert without.code() == grpc.StatusCode.UNAVAILABLE
        # A certificate from another CA is no better than none.
        stranger = local_ca.new_authority("someone else")
        foreign, foreign_key = local_ca.issue(stranger, "agent-2", client=True)
        local_ca.write_pair(foreign, foreign_key, pki.root / "f.pem", pki.root / "f-key.pem")
        other = tls.ClientFiles(
            ca=pki.paths.ca, cert=pki.root / "f.pem", key=pki.root / "f-key.pem"
        ).credentials()
        assert (await _refused(served.address, other)).code() == grpc.StatusCode.UNAVAILABLE
    finally:
        await server.stop(None)


# -- reload -----------------------------------------------------------------------------------


async def test_new_connections_see_a_rotated_certificate_without_a_restart(
    pki: tls_support.Pki, tls_server: Served
) -> None:
    assert tls_server.credentials is not None
    trusted = tls.ClientFiles(ca=pki.paths.ca).credentials()
    first = await _peer_serial(tls_server.address, pki.paths.ca)
    kept = aio.secure_channel(tls_server.address, trusted)
    stub = health_pb2_grpc.HealthStub(kept)
    await stub.Check(health_pb2.HealthCheckRequest(), timeout=10)

    serial = pki.rotate_server()
    assert serial != first
    assert await _peer_serial(tls_server.address, pki.paths.ca) == serial
    assert tls_server.credentials.reloads == 1
    # The channel opened before the rotation carries on; so does a new one.
    await stub.Check(health_pb2.HealthCheckRequest(), timeout=10)
    await kept.close(None)
    assert await _check(tls_server.address, trusted) == health_pb2.HealthCheckResponse.SERVING


async def test_a_broken_rotation_keeps_the_previous_certificate(
    pki: tls_support.Pki, tls_server: Served
) -> None:
    """A new certificate written beside the old key (a rotation caught half way) is not
    taken; once the key follows, it is."""
    assert tls_server.credentials is not None
    first = await _peer_serial(tls_server.address, pki.paths.ca)
    rotated, rotated_key, serial = pki.issue("rotated")
    pki.paths.cert.write_bytes(rotated.read_bytes())  # the key is still the old one
    assert await _peer_serial(tls_server.address, pki.paths.ca) == first
    assert tls_server.credentials.reloads == 0
    pki.paths.key.write_bytes(rotated_key.read_bytes())
    assert await _peer_serial(tls_server.address, pki.paths.ca) == serial
    assert tls_server.credentials.reloads == 1


def test_the_local_ca_is_reused_while_valid_and_renewed_for_new_hosts(tmp_path: Path) -> None:
    first = local_ca.ensure(tmp_path)
    ca, cert = first.ca.read_bytes(), first.cert.read_bytes()
    assert (first.ca_key.stat().st_mode & 0o777) == 0o600
    assert (first.key.stat().st_mode & 0o777) == 0o600
    again = local_ca.ensure(tmp_path)
    assert (again.ca.read_bytes(), again.cert.read_bytes()) == (ca, cert)
    wider = local_ca.ensure(tmp_path, hosts=(*local_ca.LOCAL_HOSTS, "10.1.2.3"))
    assert wider.ca.read_bytes() == ca  # same CA: clients keep trusting it
    assert wider.cert.read_bytes() != cert
    names = (
        x509.load_pem_x509_certificate(wider.cert.read_bytes())
        .extensions.get_extension_for_class(x509.SubjectAlternativeName)
        .value
    )
    assert "10.1.2.3" in {str(ip) for ip in names.get_values_for_type(x509.IPAddress)}
    first.ca.write_text("garbage\n")  # a broken CA: a new one, and a server cert it signed
    fresh = local_ca.ensure(tmp_path)
    assert fresh.ca.read_bytes() != ca
    x509.load_pem_x509_certificate(fresh.cert.read_bytes()).verify_directly_issued_by(
        x509.load_pem_x509_certificate(fresh.ca.read_bytes())
    )
