"""Identities for tests that stand in for an orchestrator or an agent (docs/security.md).

One identity CA per test process (`authority`), certificates issued from it as the
orchestrator would, and `SignedVNodeStub`: a VNodeService client whose every request is
signed like the driver's or an agent's (`api.signed`), with the generated stub's calling
shape so tests read the same as before.
"""

from __future__ import annotations

import datetime as dt
import functools
from pathlib import Path
from typing import Any

import grpc
from grpc import aio

from api import identity, signed
from api import tls as api_tls

HOUR = dt.timedelta(hours=1)


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@functools.cache
def authority() -> identity.Authority:
    """The test process's identity CA (creating one costs a key generation)."""
    return identity.Authority.create(now())


def orchestrator_signer(ca: identity.Authority | None = None) -> signed.Signer:
    """A signer holding an orchestrator (job driver) identity."""
    ca = ca or authority()
    key = identity.generate_key()
    signer = signed.Signer()
    signer.update(key, ca.issue_orchestrator(key, now(), HOUR))
    return signer


def pnode_signer(name: str, ca: identity.Authority | None = None) -> signed.Signer:
    """A signer holding PNode `name`'s identity."""
    ca = ca or authority()
    key = identity.generate_key()
    signer = signed.Signer()
    signer.update(key, ca.issue_pnode(identity.csr_pem(key, name), name, now(), HOUR))
    return signer


class SignedVNodeStub:
    """VNodeService over `channel`, every request signed by `signer`: `await
    stub.Forward(request)` as with the generated stub."""

    def __init__(self, channel: aio.Channel, signer: signed.Signer) -> None:
        self._stub = signed.SignedStub(channel, signer)

    def __getattr__(self, name: str) -> Any:
        if name not in signed.METHODS:
            raise AttributeError(name)

        async def call(request: Any, **options: Any) -> Any:
            return await self._stub.call(name, request, seconds=options.get("timeout") or 10.0)

        return call


def ca_flags(directory: Path, ca: identity.Authority | None = None) -> list[str]:
    """`serve` flags that make an orchestrator process use `ca` (default: `authority()`),
    so a test can sign as a PNode or as the driver of that cluster."""
    ca = ca or authority()
    cert, key = directory / "identity-ca.pem", directory / "identity-ca-key.pem"
    cert.write_bytes(ca.certificate_pem)
    key.write_bytes(ca.key_pem)
    key.chmod(0o600)
    return ["--identity-ca-cert", str(cert), "--identity-ca-key", str(key)]


@functools.cache
def driver() -> signed.Signer:
    """One job driver's (orchestrator) identity of `authority()` for the test process."""
    return orchestrator_signer()


def data_plane_channel(
    address: str,
    pnode: str,
    ca: identity.Authority | None = None,
    *,
    client: signed.Signer | None = None,
    present: bool = True,
) -> aio.Channel:
    """A channel to the data-plane listener of the agent `pnode` at `address`, as agents and
    the driver dial it: mutual TLS, trusting only `ca` (default: `authority()`), expecting
    the PNode's name <pnode>.pnode.dcnr in its certificate, and presenting `client`'s
    certificate (default: `driver()`; `present=False`: none)."""
    ca = ca or authority()
    credentials = (
        (client or driver()).client_credentials(ca.certificate_pem)
        if present
        else grpc.ssl_channel_credentials(root_certificates=ca.certificate_pem)
    )
    return aio.secure_channel(
        address,
        credentials,
        [(api_tls.TARGET_NAME_OVERRIDE, identity.dns_name("pnode", pnode))],
    )
