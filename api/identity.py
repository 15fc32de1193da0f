"""Identities of PNodes and orchestrators, and signatures over data-plane messages.

The orchestrator holds an identity CA. At registration an agent sends a certificate signing
request (CSR) for a key it generated and never shares; the orchestrator answers with a
short-lived X.509 certificate naming the PNode, which the agent renews through heartbeats
before it expires. Orchestrator replicas issue themselves a certificate from the same CA
for their job drivers. Anyone holding the CA certificate can then check who sent what:

- every data-plane request is signed by its sender over the exact bytes it sends (see
  `statement`), and carries the signature and the sender's certificate in call metadata
  (`SIGNATURE_METADATA`, `CERTIFICATE_METADATA`);
- a receiver learns the sender's `Identity` from the mutual-TLS client certificate
  (`Verifier.identify_peer`), or, in plaintext, by verifying both (`Verifier.verify`), and
  compares it with the PNode its resolution data says hosts the sending slot;
- a message that fails a check is forwarded as it was received (`SignedMessage` in the API)
  to the orchestrator, which verifies the signature and re-runs the check itself: the
  accused PNode's own signature is the evidence, and a neighbour's word is not.

Keys are ECDSA P-256 and signatures ECDSA with SHA-256 (DER), which every TLS stack and
crypto library supports, so a client written in another language needs nothing but the
.proto files and the CA certificate. Pure functions of their inputs: the caller passes the
time, so tests use a fake clock.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections import OrderedDict
from dataclasses import dataclass
from typing import Literal

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

#: SPIFFE-style trust domain of every identity this project issues.
TRUST_DOMAIN = "dcnr"
#: gRPC metadata keys (binary: the `-bin` suffix) of a signed data-plane request.
SIGNATURE_METADATA = "dcnr-signature-bin"
CERTIFICATE_METADATA = "dcnr-certificate-bin"
#: The identity name orchestrator replicas (job drivers) share.
ORCHESTRATOR = "orchestrator"
#: Bounds on what a stranger may make us parse.
MAX_CSR_BYTES = 4096
MAX_CERTIFICATE_BYTES = 4096
MAX_SIGNATURE_BYTES = 128
#: Certificates are valid from a little before they are issued, for clocks that lag.
BACKDATE = dt.timedelta(minutes=1)

_STATEMENT_PREFIX = b"dcnr.v1 signed request\n"
#: Every `IdentityError.reason` that `Verifier.verify` raises: a message that proves no
#: identity (receivers answer UNAUTHENTICATED and count it by this reason).
VERIFY_REASONS = ("Unsigned", "BadSignature", "BadCertificate", "UnknownIssuer", "Expired")

Kind = Literal["pnode", "orchestrator"]
PrivateKey = ec.EllipticCurvePrivateKey


class IdentityError(ValueError):
    """A CSR, certificate or signature that cannot be accepted; `reason` is one word."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class Identity:
    kind: Kind
    #: The PNode's name, or ORCHESTRATOR.
    name: str
    not_after: dt.datetime
    #: SHA-256 of the certificate's DER bytes.
    fingerprint: bytes

    @property
    def uri(self) -> str:
        return spiffe_uri(self.kind, self.name)


def spiffe_uri(kind: Kind, name: str) -> str:
    if kind == "orchestrator":
        return f"spiffe://{TRUST_DOMAIN}/{ORCHESTRATOR}"
    return f"spiffe://{TRUST_DOMAIN}/pnode/{name}"


def dns_name(kind: Kind, name: str) -> str:
    """The DNS name in the certificate: a TLS client connecting to a PNode by address sets
    this as the expected server name (grpc.ssl_target_name_override)."""
    if kind == "orchestrator":
        return f"{ORCHESTRATOR}.{TRUST_DOMAIN}"
    return f"{name}.pnode.{TRUST_DOMAIN}"


# -- keys and requests (the agent's side) -------------------------------------------------


def generate_key() -> PrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def key_pem(key: PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def load_key(pem: bytes) -> PrivateKey:
    key = serialization.load_pem_private_key(pem, password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, ec.SECP256R1):
        raise IdentityError("BadKey", "an identity key must be an ECDSA P-256 key")
    return key


def csr_pem(key: PrivateKey, pnode: str) -> bytes:
    """A certificate signing request for `key`, naming the PNode (common name)."""
    request = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, pnode or "pending")]))
        .sign(key, hashes.SHA256())
    )
    return request.public_bytes(serialization.Encoding.PEM)


def certificate_pem(der: bytes) -> bytes:
    return x509.load_der_x509_certificate(der).public_bytes(serialization.Encoding.PEM)


def certificate_der(pem: bytes) -> bytes:
    return x509.load_pem_x509_certificate(pem).public_bytes(serialization.Encoding.DER)


def not_after(pem: bytes) -> dt.datetime:
    return x509.load_pem_x509_certificate(pem).not_valid_after_utc


# -- the identity CA (the orchestrator's side) ---------------------------------------------


def self_signed_ca(
    key: PrivateKey, common_name: str, not_before: dt.datetime, not_after: dt.datetime
) -> x509.Certificate:
    """A CA certificate for `key`, signed by itself, that signs leaf certificates only (path
    length 0): the identity CA's, and the local TLS CA of `dcnr-orchestrator up`."""
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .sign(key, hashes.SHA256())
    )


class Authority:
    """The identity CA: issues PNode and orchestrator certificates."""

    def __init__(self, certificate: x509.Certificate, key: PrivateKey) -> None:
        self.certificate = certificate
        self._key = key

    @classmethod
    def create(cls, now: dt.datetime, *, years: int = 10) -> Authority:
        key = generate_key()
        lifetime = dt.timedelta(days=365 * years)
        return cls(self_signed_ca(key, "dcnr identity CA", now - BACKDATE, now + lifetime), key)

    @classmethod
    def from_pem(cls, certificate: bytes, key: bytes) -> Authority:
        cert = x509.load_pem_x509_certificate(certificate)
        private = load_key(key)
        if cert.public_key() != private.public_key():
            raise IdentityError("BadKey", "the identity CA key does not match its certificate")
        return cls(cert, private)

    @property
    def certificate_pem(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.PEM)

    @property
    def key_pem(self) -> bytes:
        return key_pem(self._key)

    def issue_pnode(self, csr: bytes, pnode: str, now: dt.datetime, ttl: dt.timedelta) -> bytes:
        """A certificate for the key in `csr` (PEM), naming `pnode` whatever the CSR asked:
        the name is the orchestrator's decision, the key the agent's. PEM."""
        if len(csr) > MAX_CSR_BYTES:
            raise IdentityError(
                "TooLarge", f"csr: {len(csr)} bytes is over the limit of {MAX_CSR_BYTES}"
            )
        try:
            request = x509.load_pem_x509_csr(csr)
        except ValueError as exc:
            raise IdentityError(
                "BadRequest", f"csr: not a PEM certificate request ({exc})"
            ) from exc
        if not request.is_signature_valid:
            raise IdentityError("BadRequest", "csr: its signature does not match its key")
        key = request.public_key()
        if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(
            key.curve, ec.SECP256R1
        ):
            raise IdentityError("BadKey", "csr: the key must be ECDSA P-256")
        return self._issue(key, "pnode", pnode, now, ttl)

    def issue_orchestrator(self, key: PrivateKey, now: dt.datetime, ttl: dt.timedelta) -> bytes:
        return self._issue(key.public_key(), "orchestrator", ORCHESTRATOR, now, ttl)

    def _issue(
        self,
        key: ec.EllipticCurvePublicKey,
        kind: Kind,
        name: str,
        now: dt.datetime,
        ttl: dt.timedelta,
    ) -> bytes:
        certificate = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(self.certificate.subject)
            .public_key(key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - BACKDATE)
            .not_valid_after(now + ttl)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.SubjectAlternativeName(
                    [
                        x509.UniformResourceIdentifier(spiffe_uri(kind, name)),
                        x509.DNSName(dns_name(kind, name)),
                    ]
                ),
                critical=False,
            )
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
            .sign(self._key, hashes.SHA256())
        )
        return certificate.public_bytes(serialization.Encoding.PEM)


# -- signing and verifying messages --------------------------------------------------------


def statement(method: str, body: bytes) -> bytes:
    """What a signature covers: a fixed prefix, the full gRPC method name (so a Forward's
    bytes cannot be replayed as a Backward, whose fields have the same numbers), a newline,
    and the serialized request exactly as sent."""
    return _STATEMENT_PREFIX + method.encode() + b"\n" + body


def sign(key: PrivateKey, method: str, body: bytes) -> bytes:
    return key.sign(statement(method, body), ec.ECDSA(hashes.SHA256()))


class Verifier:
    """Checks certificates against the identity CA and signatures against certificates.

    A certificate's chain is checked once and remembered by its fingerprint (a bounded LRU),
    so a message costs one SHA-256 over the certificate and one ECDSA verification; a TLS
    peer's certificate is remembered by its PEM bytes, so naming a peer costs a lookup.
    Expiry is checked on every use."""

    def __init__(self, ca_pem: bytes, *, cache_size: int = 4096) -> None:
        self._ca = x509.load_pem_x509_certificate(ca_pem)
        self._cache: OrderedDict[bytes, tuple[Identity, x509.Certificate]] = OrderedDict()
        self._cache_size = cache_size
        #: TLS peer certificates (PEM) → (identity, DER): `identify_peer`.
        self._peers: OrderedDict[bytes, tuple[Identity, bytes]] = OrderedDict()

    @property
    def ca_pem(self) -> bytes:
        return self._ca.public_bytes(serialization.Encoding.PEM)

    def identify(self, certificate: bytes, now: dt.datetime) -> Identity:
        """The identity a certificate (DER) proves, if the CA issued it and it is valid now."""
        return self._certificate(certificate, now)[0]

    def identify_peer(self, pem: bytes, now: dt.datetime) -> tuple[Identity, bytes]:
        """The identity and DER bytes of a TLS peer's certificate (PEM, as gRPC's auth
        context gives it). The handshake has checked it against the CA already; this
        learns the name from it, once per certificate (cached by its PEM bytes), and checks
        expiry on every use, since a connection may outlive its client's certificate."""
        cached = self._peers.get(pem)
        if cached is None:
            try:
                der = certificate_der(pem)
            except ValueError as exc:
                raise IdentityError(
                    "BadCertificate", f"peer certificate: not PEM X.509 ({exc})"
                ) from None
            who = self.identify(der, now)
            self._peers[pem] = cached = (who, der)
            if len(self._peers) > self._cache_size:
                self._peers.popitem(last=False)
        else:
            self._peers.move_to_end(pem)
        who, der = cached
        if not now <= who.not_after:
            raise IdentityError(
                "Expired",
                f"{who.name}'s certificate expired at {who.not_after.isoformat()}, "
                f"before {now.isoformat()}",
            )
        return cached

    def verify(
        self, method: str, body: bytes, certificate: bytes, signature: bytes, now: dt.datetime
    ) -> Identity:
        """The sender's identity, if `signature` over (method, body) is by the key of a
        valid certificate from the CA. IdentityError otherwise."""
        if not signature:
            raise IdentityError("Unsigned", "the request carries no signature")
        if len(signature) > MAX_SIGNATURE_BYTES:
            raise IdentityError("BadSignature", "the signature is too long")
        who, cert = self._certificate(certificate, now)
        key = cert.public_key()
        assert isinstance(key, ec.EllipticCurvePublicKey)  # checked when cached
        try:
            key.verify(signature, statement(method, body), ec.ECDSA(hashes.SHA256()))
        except InvalidSignature:
            raise IdentityError(
                "BadSignature", f"the signature is not {who.name}'s over this request"
            ) from None
        return who

    def _certificate(self, der: bytes, now: dt.datetime) -> tuple[Identity, x509.Certificate]:
        if not der:
            raise IdentityError("Unsigned", "the request carries no certificate")
        if len(der) > MAX_CERTIFICATE_BYTES:
            raise IdentityError(
                "BadCertificate",
                f"certificate: {len(der)} bytes is over the limit of {MAX_CERTIFICATE_BYTES}",
            )
        fingerprint = hashlib.sha256(der).digest()
        cached = self._cache.get(fingerprint)
        if cached is None:
            cached = self._check_chain(der, fingerprint)
            self._cache[fingerprint] = cached
            if len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        else:
            self._cache.move_to_end(fingerprint)
        who, cert = cached
        if not cert.not_valid_before_utc <= now <= who.not_after:
            raise IdentityError(
                "Expired",
                f"{who.name}'s certificate is valid from {cert.not_valid_before_utc.isoformat()}"
                f" to {who.not_after.isoformat()}, not at {now.isoformat()}",
            )
        return cached

    def _check_chain(self, der: bytes, fingerprint: bytes) -> tuple[Identity, x509.Certificate]:
        try:
            cert = x509.load_der_x509_certificate(der)
        except ValueError as exc:
            raise IdentityError("BadCertificate", f"certificate: not DER X.509 ({exc})") from exc
        try:
            cert.verify_directly_issued_by(self._ca)
        except (ValueError, TypeError, InvalidSignature):
            raise IdentityError(
                "UnknownIssuer", "the certificate was not issued by this cluster's identity CA"
            ) from None
        key = cert.public_key()
        if not isinstance(key, ec.EllipticCurvePublicKey):
            raise IdentityError("BadCertificate", "certificate: the key must be ECDSA P-256")
        try:
            san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        except x509.ExtensionNotFound:
            raise IdentityError("BadCertificate", "certificate: no SPIFFE URI") from None
        uris = san.value.get_values_for_type(x509.UniformResourceIdentifier)
        return _identity_of(uris, cert, fingerprint), cert


def _identity_of(uris: list[str], cert: x509.Certificate, fingerprint: bytes) -> Identity:
    pnode_prefix = f"spiffe://{TRUST_DOMAIN}/pnode/"
    for uri in uris:
        if uri == spiffe_uri("orchestrator", ORCHESTRATOR):
            return Identity("orchestrator", ORCHESTRATOR, cert.not_valid_after_utc, fingerprint)
        if uri.startswith(pnode_prefix) and len(uri) > len(pnode_prefix):
            name = uri.removeprefix(pnode_prefix)
            return Identity("pnode", name, cert.not_valid_after_utc, fingerprint)
    raise IdentityError("BadCertificate", f"certificate: no {TRUST_DOMAIN} SPIFFE URI in {uris}")
