"""The identity CA in the store (docs/security.md): replicas starting together agree on
one CA, and every later start loads it; a replica's own identity is renewed at 2/3 of its
lifetime."""

from __future__ import annotations

import asyncio
import datetime as dt

from api import identity
from api.resources import identity_ca as ca_record
from controller.state import identity_ca
from store import sqlite

NOW = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)


async def test_replicas_starting_together_agree_on_one_ca_and_later_ones_load_it(tmp_path):
    stores = [await sqlite.SqliteStore.open(tmp_path / "state.db") for _ in range(3)]
    try:
        racing = await asyncio.gather(*(identity_ca.load_or_create(s, NOW) for s in stores))
        assert len({a.certificate_pem for a in racing}) == 1, "one CA, whoever won the create"
        later = await identity_ca.load_or_create(stores[0], NOW + dt.timedelta(days=1))
        assert later.certificate_pem == racing[0].certificate_pem
        assert later.key_pem == racing[0].key_pem
        record = await stores[0].get(ca_record.IdentityAuthority, ca_record.NAME)
        assert record.spec.certificate.encode() == later.certificate_pem
    finally:
        for store in stores:
            await store.close()


def test_a_replicas_own_identity_is_the_orchestrator_and_renews_at_two_thirds() -> None:
    ca = identity.Authority.create(NOW)
    own = identity_ca.Own.issue(ca, NOW, dt.timedelta(minutes=30))
    der = identity.certificate_der(own.certificate)
    who = identity.Verifier(ca.certificate_pem).identify(der, NOW)
    assert (who.kind, who.name) == ("orchestrator", identity.ORCHESTRATOR)
    assert own.renew_at() == NOW + dt.timedelta(minutes=20)
