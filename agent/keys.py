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

The same certificate is the data-plane listener's TLS certificate (`server_credentials`):
gRPC asks `fetch` before each new connection's handshake, and gets the certificate current
at that moment, so a renewal is served without a restart. The listener is mutual TLS: it
requires a client certificate issued by the identity CA (other agents' PNode identities,
the job drivers' orchestrator identity), so the receiver knows the sender from the
handshake. Clients verify listeners with `client_ca`, the identity CA bundle, and present
the signer's certificate (`signed.Signer.client_credentials`), or speak plaintext when the
orchestrator said the cluster's data plane is plaintext
(`RegisterResponse.data_plane_plaintext`).
"""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections.abc import Callable
from typing import Any

import grpc
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
        #: From Register: the cluster's data plane is plaintext (`serve --data-plane-insecure`).
        self.plaintext = False
        #: From Register: the drivers' inboxes serve mutual TLS (`serve --driver-listen`).
        self.driver_mutual_tls = False
        self._key_pem = identity.key_pem(self.key)
        self._lock = threading.Lock()  # `fetch` runs on gRPC's threads
        self._certificate_pem = b""
        #: The identity CA: the only issuer of client certificates the listener accepts.
        self._ca_pem: bytes | None = None
        self._generation = 0  # bumped by each certificate accepted
        self._served = 0  # the generation `fetch` last handed to gRPC

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
        with self._lock:
            self._certificate_pem = certificate_pem
            if self.verifier is not None:
                self._ca_pem = self.verifier.ca_pem
            self._generation += 1
        self.expires_at = cert.not_valid_after_utc
        self._renew_at = self._monotonic() + lifetime.total_seconds() * RENEW_AT

    def client_ca(self) -> bytes | None:
        """The CA bundle a client verifies data-plane listeners with; None: plaintext."""
        if self.plaintext:
            return None
        if self.verifier is None:
            raise RuntimeError("no identity CA yet: register first")
        return self.verifier.ca_pem

    def server_credentials(self) -> grpc.ServerCredentials:
        """TLS credentials for the data-plane listener, following renewals. Call it once the
        first certificate is accepted: there is nothing to serve before."""
        initial = self._configuration()
        if initial is None:
            raise RuntimeError("no identity certificate yet: register first")
        # The stub's fetcher type omits None, which grpc documents as "no change".
        fetch: Any = self.fetch
        return grpc.dynamic_ssl_server_credentials(
            initial, fetch, require_client_authentication=True
        )

    def fetch(self) -> grpc.ServerCertificateConfiguration | None:
        """The current certificate if it changed since gRPC last asked, else None (keep)."""
        return self._configuration()

    def _configuration(self) -> grpc.ServerCertificateConfiguration | None:
        with self._lock:
            if not self._certificate_pem or self._served == self._generation:
                return None
            self._served = self._generation
            chain = self._certificate_pem
            ca = self._ca_pem
        return grpc.ssl_server_certificate_configuration(
            [(self._key_pem, chain)], root_certificates=ca
        )
