"""TLS credentials for every dcnr.v1 listener and client, from PEM files.

One module for the orchestrator (`serve`), the agent, dcnctl and the operator, so they all
read certificates the same way and fail the same way: a missing, unreadable or invalid PEM
is a `TlsError` whose message names the flag (or setting) and the path, e.g.
`--tls-key /etc/dcnr/tls.key: not a PEM private key`.

Servers reload without a restart. gRPC asks a fetcher for a certificate configuration
before every new connection's handshake (`grpc.dynamic_ssl_server_credentials`); ours
compares the files' (mtime, size, inode) with what it loaded last and re-reads them only
when one changed. A rotation that is half written (a new certificate beside the old key) or
broken is not taken: the server keeps its previous certificate, logs why once per change,
and tries again at the next connection, so a cert-manager or `kubectl create secret`
rotation needs nothing else. Connections already open keep the certificate they started
with; TLS has no way to swap it under them and no need to.

Clients read their CA bundle (and client certificate) when they build a channel. A server
name override (`grpc.ssl_target_name_override`) lets a client reach the server by an
address its certificate does not name (a pod IP, a port-forward) and still check the name
the certificate does carry.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
from pathlib import Path
from typing import Any

import grpc
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization

log = logging.getLogger("dcnr.tls")

#: gRPC channel option that sets the name checked against the server's certificate.
TARGET_NAME_OVERRIDE = "grpc.ssl_target_name_override"


class TlsError(ValueError):
    """A certificate, key or CA bundle that cannot be used; the message names the flag and
    the path."""


@dataclasses.dataclass(frozen=True, slots=True)
class Flags:
    """How the user spelled each file, for error messages: flags of a command line, keys of
    a dcnctl context, or environment variables."""

    cert: str = "--tls-cert"
    key: str = "--tls-key"
    ca: str = "--tls-ca"
    client_ca: str = "--tls-client-ca"


def _read(path: Path, flag: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise TlsError(f"{flag} {path}: no such file") from None
    except IsADirectoryError:
        raise TlsError(f"{flag} {path}: is a directory, not a PEM file") from None
    except OSError as exc:
        raise TlsError(f"{flag} {path}: cannot read: {exc.strerror or exc}") from None


def read_certificates(path: Path, flag: str) -> tuple[bytes, list[x509.Certificate]]:
    """The PEM bytes of a certificate chain or CA bundle, and the certificates in it."""
    data = _read(path, flag)
    try:
        certificates = x509.load_pem_x509_certificates(data)
    except ValueError:
        raise TlsError(
            f"{flag} {path}: not a PEM certificate (expected '-----BEGIN CERTIFICATE-----')"
        ) from None
    return data, certificates


def read_private_key(path: Path, flag: str) -> tuple[bytes, Any]:
    """The PEM bytes of an unencrypted private key, and the key."""
    data = _read(path, flag)
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise TlsError(
            f"{flag} {path}: the private key is encrypted; give an unencrypted key"
        ) from None
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise TlsError(f"{flag} {path}: not a PEM private key ({exc})") from None
    return data, key


def _public_bytes(key: Any) -> bytes:
    return bytes(
        key.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )


def read_key_pair(cert: Path, key: Path, flags: Flags) -> tuple[bytes, bytes]:
    """(certificate chain PEM, private key PEM), checked to belong together: a rotation
    caught between writing the two files must not be served."""
    chain, certificates = read_certificates(cert, flags.cert)
    private, private_key = read_private_key(key, flags.key)
    if _public_bytes(private_key.public_key()) != _public_bytes(certificates[0].public_key()):
        raise TlsError(
            f"{flags.key} {key}: this key does not belong to the certificate in "
            f"{flags.cert} {cert}"
        )
    return chain, private


# -- servers ----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class ServerFiles:
    """A listener's certificate and key, and the CA its clients' certificates must chain to
    (mutual TLS) when given."""

    cert: Path
    key: Path
    client_ca: Path | None = None
    flags: Flags = Flags()

    @property
    def mutual(self) -> bool:
        return self.client_ca is not None

    def paths(self) -> list[Path]:
        return [self.cert, self.key, *([self.client_ca] if self.client_ca else [])]

    def load(self) -> grpc.ServerCertificateConfiguration:
        chain, private = read_key_pair(self.cert, self.key, self.flags)
        client_ca = (
            read_certificates(self.client_ca, self.flags.client_ca)[0] if self.client_ca else None
        )
        return grpc.ssl_server_certificate_configuration(
            [(private, chain)], root_certificates=client_ca
        )


def _stamp(paths: list[Path]) -> tuple[tuple[int, int, int], ...]:
    stamps = []
    for path in paths:
        try:
            st = os.stat(path)
        except OSError:
            stamps.append((-1, -1, -1))
        else:
            stamps.append((st.st_mtime_ns, st.st_size, st.st_ino))
    return tuple(stamps)


class ReloadingServerCredentials:
    """Server credentials that follow their files. `load()` once at start (raising
    `TlsError` for bad files, so a misconfigured server never starts); then gRPC calls
    `fetch` before each handshake from its own threads."""

    def __init__(self, files: ServerFiles) -> None:
        self.files = files
        self._lock = threading.Lock()
        self._loaded = _stamp(files.paths())
        self._initial = files.load()
        self._refused: tuple[tuple[int, int, int], ...] | None = None
        #: How many times new files were taken after the first load.
        self.reloads = 0

    def credentials(self) -> grpc.ServerCredentials:
        # The stub's fetcher type omits None, which grpc documents as "no change".
        fetch: Any = self.fetch
        return grpc.dynamic_ssl_server_credentials(
            self._initial, fetch, require_client_authentication=self.files.mutual
        )

    def fetch(self) -> grpc.ServerCertificateConfiguration | None:
        """A new configuration if the files changed and are valid, else None (keep the
        current one)."""
        stamp = _stamp(self.files.paths())
        with self._lock:
            if stamp == self._loaded:
                return None
            try:
                config = self.files.load()
            except TlsError as exc:
                if stamp != self._refused:  # say it once per change, not once per connection
                    self._refused = stamp
                    log.warning("TLS files changed but cannot be used; keeping the previous "
                                "certificate: %s", exc)  # fmt: skip
                return None
            self._loaded = stamp
            self._refused = None
            self.reloads += 1
        log.info("TLS certificate reloaded from %s", self.files.cert)
        return config


# -- clients ----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class ClientFiles:
    """What a client trusts (the CA bundle; None: gRPC's default roots, which are the file
    $GRPC_DEFAULT_SSL_ROOTS_FILE_PATH names when set, else the Mozilla bundle grpcio ships)
    and, for mutual TLS, the certificate it proves itself with."""

    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None
    #: The name to check the server's certificate against instead of the address's host.
    server_name: str = ""
    flags: Flags = Flags()

    def credentials(self) -> grpc.ChannelCredentials:
        if (self.cert is None) != (self.key is None):
            flags = self.flags
            given, missing = (
                (flags.cert, flags.key) if self.key is None else (flags.key, flags.cert)
            )
            raise TlsError(f"{given} needs {missing} too (a client certificate and its key)")
        root = read_certificates(self.ca, self.flags.ca)[0] if self.ca else None
        if self.cert is not None and self.key is not None:
            chain, private = read_key_pair(self.cert, self.key, self.flags)
            return grpc.ssl_channel_credentials(
                root_certificates=root, private_key=private, certificate_chain=chain
            )
        return grpc.ssl_channel_credentials(root_certificates=root)

    def options(self) -> list[tuple[str, Any]]:
        return [(TARGET_NAME_OVERRIDE, self.server_name)] if self.server_name else []


def describe_failure(
    code: grpc.StatusCode, details: str, *, tls: bool, ca_given: bool = True
) -> str | None:
    """A one-line hint when a call failed because the two ends disagree about TLS or the
    server's certificate is not trusted; None when the failure looks like something else.
    `ca_given`: the client named a CA bundle (False: it trusts gRPC's default roots).

    gRPC reports all of these as UNAVAILABLE, with the handshake's words in the details: a
    TLS client at a plaintext server gets WRONG_VERSION_NUMBER, an untrusted certificate
    CERTIFICATE_VERIFY_FAILED, a wrong name "Hostname Verification"; a plaintext client at a
    TLS server, and a TLS client without an acceptable certificate at a mutual TLS server,
    see the server close the socket.
    """
    if code != grpc.StatusCode.UNAVAILABLE:
        return None
    text = details.lower()
    if tls:
        if "wrong_version_number" in text:
            return (
                "the server does not speak TLS (serve --insecure?): to talk plaintext anyway, "
                "give --insecure (a dcnctl context: insecure: true)"
            )
        if "certificate_verify_failed" in text:
            if not ca_given:
                return (
                    "the server's certificate is not signed by a CA trusted by default "
                    "(gRPC's bundled roots, or $GRPC_DEFAULT_SSL_ROOTS_FILE_PATH): "
                    "give the CA bundle that signed it in tls-ca"
                )
            return (
                "the server's certificate is not signed by the CA in tls-ca: "
                "give the CA bundle that signed it"
            )
        if "hostname verification" in text:
            return (
                "the server's certificate does not name the host dialled: "
                "set tls-server-name to a name it carries"
            )
        if "handshake" in text:
            return (
                "the TLS handshake failed: the server may want a client certificate "
                "(tls-cert and tls-key)"
            )
        if "socket closed" in text or "connection reset" in text:
            # TLS 1.3: the server checks the client's certificate after the client thinks
            # the handshake is done, and refuses by closing the connection.
            return (
                "the server closed the TLS connection: it may want a client certificate "
                "signed by its client CA (tls-cert and tls-key)"
            )
        return None
    if "socket closed" in text or "connection reset" in text:
        return (
            "the server closed the connection: it may require TLS "
            "(drop --insecure; give tls-ca if its CA is private)"
        )
    return None
