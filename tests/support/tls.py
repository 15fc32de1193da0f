"""TLS for tests: a CA in a temporary directory that issues server and client certificates,
and the certificate a real handshake presents (read from a raw `ssl` socket, so what the
server sends is checked, not what a gRPC channel makes of it)."""

from __future__ import annotations

import dataclasses
import socket
import ssl
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from controller import local_ca


@dataclasses.dataclass
class Pki:
    root: Path
    authority: local_ca.Authority
    #: The CA and a server certificate for localhost, 127.0.0.1 and ::1.
    paths: local_ca.Paths

    @classmethod
    def create(cls, root: Path) -> Pki:
        paths = local_ca.ensure(root)
        key = serialization.load_pem_private_key(paths.ca_key.read_bytes(), password=None)
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        authority = local_ca.Authority(x509.load_pem_x509_certificate(paths.ca.read_bytes()), key)
        return cls(root, authority, paths)

    def issue(self, name: str, *, client: bool = False) -> tuple[Path, Path, int]:
        """New files for a certificate signed by this CA: (cert, key, serial)."""
        certificate, key = local_ca.issue(
            self.authority, name, hosts=() if client else local_ca.LOCAL_HOSTS, client=client
        )
        cert_path, key_path = self.root / f"{name}.pem", self.root / f"{name}-key.pem"
        local_ca.write_pair(certificate, key, cert_path, key_path)
        return cert_path, key_path, certificate.serial_number

    def rotate_server(self) -> int:
        """A new server certificate and key in place of the current ones; its serial."""
        certificate, key = local_ca.issue(self.authority, "rotated", hosts=local_ca.LOCAL_HOSTS)
        local_ca.write_pair(certificate, key, self.paths.cert, self.paths.key)
        return int(certificate.serial_number)


def peer_serial(address: str, ca: Path, *, server_name: str = "localhost") -> int:
    """The serial of the certificate a new TLS connection to `address` is shown (blocking)."""
    return int(peer_certificate(address, ca, server_name=server_name).serial_number)


def peer_certificate(address: str, ca: Path, *, server_name: str) -> x509.Certificate:
    """The certificate a new TLS connection to `address` is shown (blocking), verified
    against `ca` and `server_name`."""
    host, port = address.rsplit(":", 1)
    context = ssl.create_default_context(cafile=str(ca))
    context.set_alpn_protocols(["h2"])
    with (
        socket.create_connection((host, int(port)), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname=server_name) as wrapped,
    ):
        der = wrapped.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der)
