"""api.identity: certificates from the identity CA, and signatures over requests."""

from __future__ import annotations

import datetime as dt

import pytest

from api import identity

NOW = dt.datetime(2026, 12, 7, 12, 0, tzinfo=dt.UTC)
TTL = dt.timedelta(hours=1)
FORWARD = "/dcnr.v1.VNodeService/Forward"
BACKWARD = "/dcnr.v1.VNodeService/Backward"


@pytest.fixture(scope="module")
def ca() -> identity.Authority:
    return identity.Authority.create(NOW)


@pytest.fixture(scope="module")
def agent_key() -> identity.PrivateKey:
    return identity.generate_key()


@pytest.fixture(scope="module")
def agent_cert(ca: identity.Authority, agent_key: identity.PrivateKey) -> bytes:
    csr = identity.csr_pem(agent_key, "whatever-the-agent-asks")
    return identity.certificate_der(ca.issue_pnode(csr, "gpu-1", NOW, TTL))


def test_signed_request_names_the_pnode_the_ca_chose(
    ca: identity.Authority, agent_key: identity.PrivateKey, agent_cert: bytes
) -> None:
    body = b"\x0a\x03job"
    signature = identity.sign(agent_key, FORWARD, body)
    who = identity.Verifier(ca.certificate_pem).verify(FORWARD, body, agent_cert, signature, NOW)
    assert (who.kind, who.name) == ("pnode", "gpu-1")
    assert who.uri == "spiffe://dcnr/pnode/gpu-1"
    assert who.not_after == NOW + TTL


def test_changed_bytes_or_method_fail(
    ca: identity.Authority, agent_key: identity.PrivateKey, agent_cert: bytes
) -> None:
    verifier = identity.Verifier(ca.certificate_pem)
    signature = identity.sign(agent_key, FORWARD, b"loss=0.5")
    for method, body in ((FORWARD, b"loss=-1."), (BACKWARD, b"loss=0.5")):
        with pytest.raises(identity.IdentityError) as caught:
            verifier.verify(method, body, agent_cert, signature, NOW)
        assert caught.value.reason == "BadSignature"


def test_another_ca_or_no_signature_is_refused(
    agent_key: identity.PrivateKey, agent_cert: bytes
) -> None:
    other = identity.Verifier(identity.Authority.create(NOW).certificate_pem)
    signature = identity.sign(agent_key, FORWARD, b"x")
    with pytest.raises(identity.IdentityError) as caught:
        other.verify(FORWARD, b"x", agent_cert, signature, NOW)
    assert caught.value.reason == "UnknownIssuer"
    with pytest.raises(identity.IdentityError) as caught:
        other.verify(FORWARD, b"x", agent_cert, b"", NOW)
    assert caught.value.reason == "Unsigned"
    with pytest.raises(identity.IdentityError) as caught:
        other.verify(FORWARD, b"x", b"", signature, NOW)
    assert caught.value.reason == "Unsigned"
    with pytest.raises(identity.IdentityError) as caught:
        other.verify(FORWARD, b"x", b"\x30\x03garbage", signature, NOW)
    assert caught.value.reason == "BadCertificate"


def test_a_certificate_is_refused_after_it_expires_even_when_cached(
    ca: identity.Authority, agent_key: identity.PrivateKey, agent_cert: bytes
) -> None:
    verifier = identity.Verifier(ca.certificate_pem)
    signature = identity.sign(agent_key, FORWARD, b"x")
    verifier.verify(FORWARD, b"x", agent_cert, signature, NOW)
    with pytest.raises(identity.IdentityError) as caught:
        verifier.verify(FORWARD, b"x", agent_cert, signature, NOW + TTL + dt.timedelta(seconds=1))
    assert caught.value.reason == "Expired"


def test_a_signature_by_another_key_is_refused(ca: identity.Authority, agent_cert: bytes) -> None:
    thief = identity.generate_key()
    signature = identity.sign(thief, FORWARD, b"x")
    with pytest.raises(identity.IdentityError) as caught:
        identity.Verifier(ca.certificate_pem).verify(FORWARD, b"x", agent_cert, signature, NOW)
    assert caught.value.reason == "BadSignature"


def test_orchestrator_identity(ca: identity.Authority) -> None:
    key = identity.generate_key()
    cert = identity.certificate_der(ca.issue_orchestrator(key, NOW, TTL))
    signature = identity.sign(key, "/dcnr.v1.VNodeService/Restore", b"r")
    who = identity.Verifier(ca.certificate_pem).verify(
        "/dcnr.v1.VNodeService/Restore", b"r", cert, signature, NOW
    )
    assert (who.kind, who.name) == ("orchestrator", identity.ORCHESTRATOR)


def test_bad_csrs_are_refused_with_a_reason(ca: identity.Authority) -> None:
    for csr, reason in ((b"x" * (identity.MAX_CSR_BYTES + 1), "TooLarge"), (b"junk", "BadRequest")):
        with pytest.raises(identity.IdentityError) as caught:
            ca.issue_pnode(csr, "gpu-1", NOW, TTL)
        assert caught.value.reason == reason
        assert "csr" in str(caught.value)


def test_authority_round_trips_through_pem(ca: identity.Authority) -> None:
    again = identity.Authority.from_pem(ca.certificate_pem, ca.key_pem)
    key = identity.generate_key()
    cert = identity.certificate_der(again.issue_pnode(identity.csr_pem(key, "a"), "a", NOW, TTL))
    assert identity.Verifier(ca.certificate_pem).identify(cert, NOW).name == "a"
    with pytest.raises(identity.IdentityError):
        identity.Authority.from_pem(ca.certificate_pem, identity.key_pem(key))
