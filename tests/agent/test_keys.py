"""The agent's identity keeper: when it asks for a renewal, what it signs and verifies with.
A fake monotonic clock: no test waits for a certificate to age."""

from __future__ import annotations

import datetime as dt

import pytest

from agent import keys
from api import identity
from tests.support import identities


class Monotonic:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def issued(keeper: keys.Keeper, ttl: dt.timedelta) -> bytes:
    return identities.authority().issue_pnode(keeper.csr("p1"), "p1", identities.now(), ttl)


def test_renewal_is_asked_for_once_two_thirds_of_the_lifetime_have_passed() -> None:
    clock = Monotonic()
    keeper = keys.Keeper(monotonic=clock)
    assert not keeper.due(), "nothing to renew before the first certificate"
    assert keeper.verifier is None
    assert not keeper.signer.ready
    keeper.accept(issued(keeper, dt.timedelta(seconds=30)), identities.authority().certificate_pem)
    assert keeper.signer.ready
    assert keeper.verifier is not None
    clock.now += 19.9
    assert not keeper.due()
    clock.now += 0.2
    assert keeper.due()
    renewed = issued(keeper, dt.timedelta(seconds=30))
    keeper.accept(renewed)  # a heartbeat's answer: no CA bundle, the one from Register stays
    assert not keeper.due()
    assert keeper.signer.certificate == identity.certificate_der(renewed)
    assert keeper.expires_at == identity.not_after(renewed)


def test_what_it_signs_verifies_as_its_pnode_with_the_ca_bundle_it_keeps() -> None:
    keeper = keys.Keeper()
    keeper.accept(issued(keeper, identities.HOUR), identities.authority().certificate_pem)
    body = b"\x08\x01"
    entries = dict(keeper.signer.metadata("/dcnr.v1.VNodeService/Forward", body))
    assert keeper.verifier is not None
    who = keeper.verifier.verify(
        "/dcnr.v1.VNodeService/Forward",
        body,
        entries[identity.CERTIFICATE_METADATA],
        entries[identity.SIGNATURE_METADATA],
        identities.now(),
    )
    assert (who.kind, who.name) == ("pnode", "p1")


def test_the_listener_is_handed_each_certificate_once_and_the_client_ca_follows_the_mode() -> None:
    keeper = keys.Keeper()
    assert keeper.fetch() is None, "nothing to serve before the first certificate"
    with pytest.raises(RuntimeError, match="register first"):
        keeper.server_credentials()
    with pytest.raises(RuntimeError, match="register first"):
        keeper.client_ca()
    keeper.accept(issued(keeper, identities.HOUR), identities.authority().certificate_pem)
    assert keeper.client_ca() == identities.authority().certificate_pem
    assert keeper.server_credentials() is not None  # takes the first certificate
    assert keeper.fetch() is None, "unchanged: gRPC keeps what it has"
    keeper.accept(issued(keeper, identities.HOUR))
    assert keeper.fetch() is not None, "renewed: the next handshake shows the new one"
    assert keeper.fetch() is None
    keeper.plaintext = True  # RegisterResponse.data_plane_plaintext
    assert keeper.client_ca() is None
