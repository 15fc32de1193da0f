"""The agent's identity (docs/security.md): its key, certificate and the CA bundle.

The key is generated at start and lives in memory only: a restarted agent registers with a
new key, and nothing on disk can be stolen to speak for this PNode. Register sends a CSR for
it and gets back a certificate naming the PNode and the identity CA bundle; once 2/3 of the
certificate's lifetime has passed, the next heartbeat carries a CSR again and its answer
renews the certificate (`Keeper.due`). The lifetime is read from the certificate and
counted on this machine's monotonic clock from when the certificate arrived, so a drifting
wall clock does not make the agent renew late.

`signer` signs every outgoing VNodeService request (`api.signed`); `verifier` checks every
incoming one against the CA bundle. Both are shared objects, updated in place on renewal.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable

from cryptography import x509

from api import identity, signed

#: A certificate is renewed once this share of its lifetime has passed.
RENEW_AT = 2 / 3


class Keeper:
    def __init__(self, *, monotonic: Callable[[], float] = time.monotonic) -> None:
        self._monotonic = monotonic
        self.key = identity.generate_key()
        self.signer = signed.Signer()
        #: None until the first certificate: every incoming message is refused until then.
        self.verifier: identity.Verifier | None = None
        #: When the current certificate expires (the orchestrator's clock), for logs.
        self.expires_at: dt.datetime | None = None
        self._renew_at = float("inf")

    def csr(self, name: str) -> bytes:
        return identity.csr_pem(self.key, name)

    def due(self) -> bool:
        """Whether the next heartbeat should ask for a renewed certificate."""
        return self._monotonic() >= self._renew_at

    def accept(self, certificate_pem: bytes, ca_pem: bytes = b"") -> None:
        """A certificate (and, from Register, the CA bundle) the orchestrator issued us."""
        cert = x509.load_pem_x509_certificate(certificate_pem)
        lifetime = (cert.not_valid_after_utc - cert.not_valid_before_utc - identity.BACKDATE)
        self.signer.update(self.key, certificate_pem)
        if ca_pem and (self.verifier is None or self.verifier.ca_pem != ca_pem):
            self.verifier = identity.Verifier(ca_pem)
        self.expires_at = cert.not_valid_after_utc
        self._renew_at = self._monotonic() + lifetime.total_seconds() * RENEW_AT
