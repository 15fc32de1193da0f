"""The orchestrators' identity CA and each replica's own identity.

Where the CA comes from, in order: `serve --identity-ca-cert/--identity-ca-key` (PEM files,
e.g. from a Kubernetes Secret), else the store's `identity-ca` record
(`api.resources.identity_ca`), created by `init-store` or by the first `serve` that finds
none. The create is conditional, so replicas starting together agree on one CA: the losers
of the race read the winner's. Store access is therefore CA access (docs/security.md).

Each replica issues itself an orchestrator certificate (`Own`) for a key that never leaves
its memory, and renews it once 2/3 of its lifetime has passed, without a restart.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass

from api import identity
from api.resources import identity_ca, meta
from store import base, errors

log = logging.getLogger("dcnr.identity")

#: A certificate is renewed once this share of its lifetime has passed.
RENEW_AT = 2 / 3


async def load_or_create(store: base.Store, now: dt.datetime) -> identity.Authority:
    """The CA from the store, created there first if there is none (one winner)."""
    try:
        record = await store.get(identity_ca.IdentityAuthority, identity_ca.NAME)
    except errors.NotFound:
        created = identity.Authority.create(now)
        record = identity_ca.IdentityAuthority(
            metadata=meta.ObjectMeta(name=identity_ca.NAME),
            spec=identity_ca.IdentityAuthoritySpec(
                certificate=created.certificate_pem.decode(), key=created.key_pem.decode()
            ),
        )
        try:
            await store.create(record)
            log.info("created the identity CA in the store")
            return created
        except errors.AlreadyExists:  # another replica won the race: use its CA
            record = await store.get(identity_ca.IdentityAuthority, identity_ca.NAME)
    return identity.Authority.from_pem(record.spec.certificate.encode(), record.spec.key.encode())


def renew_at(issued: dt.datetime, expires: dt.datetime) -> dt.datetime:
    """When a certificate valid from `issued` to `expires` should be renewed."""
    return issued + (expires - issued) * RENEW_AT


@dataclass
class Own:
    """This replica's orchestrator identity: its key and current certificate (PEM)."""

    key: identity.PrivateKey
    certificate: bytes
    issued: dt.datetime
    expires: dt.datetime

    @classmethod
    def issue(cls, authority: identity.Authority, now: dt.datetime, ttl: dt.timedelta) -> Own:
        key = identity.generate_key()
        return cls(key, authority.issue_orchestrator(key, now, ttl), now, now + ttl)

    def renew_at(self) -> dt.datetime:
        return renew_at(self.issued, self.expires)
