"""Signed data-plane requests for tests of evidence: a test identity CA, one key and
certificate per PNode, and `SignedMessage`s built exactly as a receiving agent forwards them
(the sender's signature over the serialized request)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable

import numpy as np

from api import identity, tensors
from api.dcnr.v1 import common_pb2, vnode_pb2

NOW = dt.datetime(2030, 1, 1, 12, 0, tzinfo=dt.UTC)
FORWARD = "/dcnr.v1.VNodeService/Forward"
BACKWARD = "/dcnr.v1.VNodeService/Backward"


class Identities:
    """A CA and the identities of `pnodes`, issued at `now` for an hour."""

    def __init__(self, pnodes: Iterable[str], now: dt.datetime = NOW) -> None:
        self.ca = identity.Authority.create(now - dt.timedelta(days=1))
        self.verifier = identity.Verifier(self.ca.certificate_pem)
        self.keys: dict[str, identity.PrivateKey] = {}
        self.certificates: dict[str, bytes] = {}
        for name in pnodes:
            key = identity.generate_key()
            pem = self.ca.issue_pnode(identity.csr_pem(key, name), name, now, dt.timedelta(hours=1))
            self.keys[name] = key
            self.certificates[name] = identity.certificate_der(pem)

    def sign(
        self,
        signer: str,
        request: vnode_pb2.ForwardRequest | vnode_pb2.BackwardRequest,
        *,
        key_of: str | None = None,
    ) -> common_pb2.SignedMessage:
        """`request` signed by `signer`'s key and certificate (`key_of`: sign with another
        PNode's key under `signer`'s certificate, a forgery)."""
        method = FORWARD if isinstance(request, vnode_pb2.ForwardRequest) else BACKWARD
        body = request.SerializeToString()
        return common_pb2.SignedMessage(
            method=method,
            body=body,
            certificate=self.certificates[signer],
            signature=identity.sign(self.keys[key_of or signer], method, body),
        )


def forward(
    array: np.ndarray,
    *,
    sender: tuple[str, int, int],
    target: tuple[str, int, int],
    job: str = "train",
    step: int = 5,
    network: str = "net",
) -> vnode_pb2.ForwardRequest:
    """A Forward of `array` from `sender` to `target`, each (vnode, replica, epoch)."""
    return vnode_pb2.ForwardRequest(
        job=job,
        step=step,
        network=network,
        sender_vnode=sender[0],
        sender_replica=sender[1],
        sender_epoch=sender[2],
        target_vnode=target[0],
        target_replica=target[1],
        target_epoch=target[2],
        tensor=tensors.encode(array),
        attempt=1,
    )
