"""Signed VNodeService calls on the wire: send the bytes that were signed, receive the bytes
that were sent.

A signature covers the serialized request exactly as sent (`api.identity.statement`), and
protobuf serialization is not canonical, so neither side may serialize twice: the sender
serializes once, signs those bytes and hands them to gRPC untouched (a multicallable whose
request serializer is the identity), and the receiver's handler gets the raw bytes (a
generic handler whose request deserializer keeps them), verifies them and only then parses.

`Signer` holds the sender's current key and certificate and is swapped on renewal, so a
long-lived channel keeps signing with the newest identity.

A Deliver stream (STREAMED DELIVERY in vnode.proto) carries the same signed bytes, with the
signature and certificate in each DeliverRequest instead of call metadata, signed over the
Forward or Backward method's statement: `deliver_request` builds one, `streamed` turns one
back into the SignedMessage a unary call of that method would have been.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

import grpc
from google.protobuf import message as pb_message
from grpc import aio

from api import identity
from api.dcnr.v1 import common_pb2, vnode_pb2

SERVICE = "dcnr.v1.VNodeService"
#: Method name → (request type, response type) of every VNodeService method.
METHODS: dict[str, tuple[type[pb_message.Message], type[pb_message.Message]]] = {
    "Forward": (vnode_pb2.ForwardRequest, vnode_pb2.ForwardResponse),
    "Backward": (vnode_pb2.BackwardRequest, vnode_pb2.BackwardResponse),
    "Checkpoint": (vnode_pb2.CheckpointRequest, vnode_pb2.CheckpointResponse),
    "Restore": (vnode_pb2.RestoreRequest, vnode_pb2.RestoreResponse),
    "DescribeData": (vnode_pb2.DescribeDataRequest, vnode_pb2.DescribeDataResponse),
}


#: The streamed delivery RPC (not in METHODS: its messages are Forward and Backward).
DELIVER = "Deliver"
#: The methods a Deliver stream carries, by the DeliverRequest body field that holds them.
STREAMED = {"forward": "Forward", "backward": "Backward"}


def full_method(name: str) -> str:
    return f"/{SERVICE}/{name}"


def _raw(body: bytes) -> bytes:
    return body


class Signer:
    """The sender's identity key and certificate (DER); `update` on every renewal.

    The same key and certificate are the sender's TLS client certificate on the data plane
    (mutual TLS, `client_credentials`); `generation` changes with every renewal, so a
    client knows when to rebuild its channels (a channel's credentials are fixed)."""

    def __init__(self) -> None:
        self._key: identity.PrivateKey | None = None
        self._certificate = b""
        self._key_pem = b""
        self._certificate_pem = b""
        self.generation = 0

    @property
    def ready(self) -> bool:
        return self._key is not None and bool(self._certificate)

    @property
    def certificate(self) -> bytes:
        return self._certificate

    def update(self, key: identity.PrivateKey, certificate_pem: bytes) -> None:
        self._key, self._certificate = key, identity.certificate_der(certificate_pem)
        self._key_pem, self._certificate_pem = identity.key_pem(key), certificate_pem
        self.generation += 1

    def client_credentials(self, root_ca: bytes) -> grpc.ChannelCredentials:
        """TLS channel credentials trusting `root_ca` and presenting this identity's
        certificate (mutual TLS on the data plane); rebuild them when `generation` moves."""
        if not self.ready:
            raise RuntimeError("no identity certificate yet: nothing to present")
        return grpc.ssl_channel_credentials(
            root_certificates=root_ca,
            private_key=self._key_pem,
            certificate_chain=self._certificate_pem,
        )

    def metadata(self, method: str, body: bytes) -> tuple[tuple[str, bytes], ...]:
        """The two metadata entries of a signed request; none before the first certificate
        (the receiver then refuses the call as Unsigned)."""
        if self._key is None or not self._certificate:
            return ()
        return (
            (identity.SIGNATURE_METADATA, identity.sign(self._key, method, body)),
            (identity.CERTIFICATE_METADATA, self._certificate),
        )


def deliver_request(
    signer: Signer, name: str, body: bytes, sequence: int
) -> vnode_pb2.DeliverRequest:
    """A Deliver stream's message carrying `body`, a serialized request of method `name`
    ("Forward" or "Backward"), signed as the unary call of that method signs it."""
    request = vnode_pb2.DeliverRequest(sequence=sequence)
    if name == "Forward":
        request.forward = body
    else:
        request.backward = body
    for key, value in signer.metadata(full_method(name), body):
        if key == identity.SIGNATURE_METADATA:
            request.signature = value
        elif key == identity.CERTIFICATE_METADATA:
            request.certificate = value
    return request


def streamed(request: vnode_pb2.DeliverRequest) -> tuple[str, common_pb2.SignedMessage] | None:
    """(method name, the message as evidence) of a Deliver stream's message: what the unary
    call of that method would have been; None when it carries no body."""
    which = request.WhichOneof("body")
    if which is None:
        return None
    name = STREAMED[which]
    return name, common_pb2.SignedMessage(
        method=full_method(name),
        body=getattr(request, which),
        certificate=request.certificate,
        signature=request.signature,
    )


class SignedStub:
    """VNodeService over one channel, every request signed by `signer`."""

    def __init__(self, channel: aio.Channel, signer: Signer) -> None:
        self.channel = channel
        self._signer = signer
        self._calls = {
            name: channel.unary_unary(
                full_method(name),
                request_serializer=_raw,
                response_deserializer=response.FromString,
            )
            for name, (_request, response) in METHODS.items()
        }

    async def call(self, name: str, request: pb_message.Message, *, seconds: float) -> Any:
        """Serialize `request` once, sign those bytes, send them; the parsed response."""
        body = request.SerializeToString()
        metadata = self._signer.metadata(full_method(name), body)
        return await self._calls[name](body, metadata=metadata, timeout=seconds)


def received(
    method: str, body: bytes, context: aio.ServicerContext[Any, Any]
) -> common_pb2.SignedMessage:
    """A received request with its signature and certificate, as evidence would carry it."""
    signature = certificate = b""
    for key, value in context.invocation_metadata() or ():
        if key == identity.SIGNATURE_METADATA and isinstance(value, bytes):
            signature = value
        elif key == identity.CERTIFICATE_METADATA and isinstance(value, bytes):
            certificate = value
    return common_pb2.SignedMessage(
        method=method, body=body, certificate=certificate, signature=signature
    )


def peer_certificate(context: aio.ServicerContext[Any, Any]) -> bytes:
    """The PEM certificate the client presented in the TLS handshake (mutual TLS), or b""
    (plaintext, or no client certificate)."""
    found = (context.auth_context() or {}).get("x509_pem_cert") or ()
    for pem in found:
        if isinstance(pem, bytes):
            return pem
    return b""


def sender(
    verifier: identity.Verifier,
    message: common_pb2.SignedMessage,
    peer_pem: bytes,
    now: dt.datetime,
) -> tuple[identity.Identity, bool]:
    """Who sent a request that arrived over mutual TLS, and whether its signature is
    verified yet; `identity.IdentityError` if the request proves no sender.

    The handshake proved the client's certificate (`peer_pem`, issued by the identity CA);
    its name is read from it (cached by certificate). The signature is then needed only as
    evidence: it must be there, by that same certificate, and is verified only when the
    message is about to become evidence (`verify`). A request signed with another
    certificate than the connection's (a renewal between the two) is verified now, and its
    signer must be the peer (reason NotSender otherwise)."""
    if not peer_pem:
        raise identity.IdentityError("Unsigned", "the connection presented no client certificate")
    who, der = verifier.identify_peer(peer_pem, now)
    if not message.signature or not message.certificate:
        raise identity.IdentityError(
            "Unsigned", "the request carries no signature or no certificate"
        )
    if message.certificate == der:
        return who, False
    signer = verify(verifier, message, now)
    if (signer.kind, signer.name) != (who.kind, who.name):
        raise identity.IdentityError(
            "NotSender", f"signer: {signer.uri} is not the connection's peer {who.uri}"
        )
    return who, True


def verify(
    verifier: identity.Verifier, message: common_pb2.SignedMessage, now: dt.datetime
) -> identity.Identity:
    """The sender's identity; `identity.IdentityError` if the message does not prove one."""
    return verifier.verify(
        message.method, message.body, message.certificate, message.signature, now
    )


RawBehaviour = Callable[[bytes, aio.ServicerContext[Any, Any]], Awaitable[pb_message.Message]]
#: Deliver: the stream's raw DeliverRequest bytes in, DeliverResponses out.
StreamBehaviour = Callable[
    [AsyncIterator[bytes], aio.ServicerContext[Any, Any]],
    AsyncIterator[vnode_pb2.DeliverResponse],
]


def raw_handler(
    behaviours: Mapping[str, RawBehaviour], *, deliver: StreamBehaviour | None = None
) -> grpc.GenericRpcHandler[Any, Any]:
    """VNodeService whose behaviours take the request's raw bytes (verify, then parse);
    `behaviours`: method name → behaviour, for every name in METHODS; `deliver`: the Deliver
    stream's, given each DeliverRequest's raw bytes (None: Deliver is UNIMPLEMENTED, as at
    a server older than it)."""
    handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {
        name: grpc.unary_unary_rpc_method_handler(
            behaviours[name],
            request_deserializer=_raw,
            response_serializer=response.SerializeToString,
        )
        for name, (_request, response) in METHODS.items()
    }
    if deliver is not None:
        handlers[DELIVER] = grpc.stream_stream_rpc_method_handler(
            deliver,
            request_deserializer=_raw,
            response_serializer=vnode_pb2.DeliverResponse.SerializeToString,
        )
    return grpc.method_handlers_generic_handler(SERVICE, handlers)
