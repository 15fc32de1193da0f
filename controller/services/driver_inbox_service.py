"""VNodeService as the orchestrator serves it: for `__driver__` only.

The wire side of the driver's inbox. Every Forward and Backward is signed by its sender
(SIGNED REQUESTS in common.proto): the handler takes the raw request bytes (`api.signed`),
verifies the signature and the certificate against the identity CA before anything else
(no signature, a certificate the CA never issued, an expired one: UNAUTHENTICATED, with the
verifier's reason), and only then parses the request and hands it, with the sender's
identity, to `controller.jobs.driver_inbox.Receiver`, which checks that identity hosts the
sending slot at its epoch and that a run waits for the message before any decoding, check
or strike.

On the mutual-TLS inbox listener (`serve --driver-listen`, `mutual_tls=True`) the handshake
has proven the sender's identity certificate, so the sender is read from it (`api.signed
.sender`, as an agent does) and the signature, still required and kept, is verified only
when the message may become evidence: a sink output that fails its check, before its PNode
is struck, and a result of a replicated sink, before it is compared. One that does not
verify then is refused with the verifier's reason and strikes nobody.

Every refusal is counted by reason (`on_refused`) and becomes a status code in `rpc`.
Checkpoint and Restore are refused: the driver holds no training state.

Deliver (STREAMED DELIVERY in vnode.proto) carries the same Forward and Backward messages
on one stream per edge, each with its own signature and certificate: each is turned into
the evidence its unary call would have been (`api.signed.streamed`) and handled by the
unary call's code (`_receive`): the same sender (the stream's client certificate over
mutual TLS, checked per message; each signature verified otherwise), attribution, checks,
strikes and refusal codes and reasons (`rpc.refusal`), answered in the DeliverResponse
instead of the call's status. A refusal ends its message, never the stream. Handling a
message never waits (filing it in the inbox is synchronous), so each is answered before
the next is read: one message of a stream in hand at a time, in the order sent, and a
stream costs the server no more than the unary calls it replaces (every message is still
authenticated and attributed on its own; gRPC's per-message size limit applies to each).
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

from google.protobuf import message as pb_message
from grpc import aio

from api import identity, signed
from api.dcnr.v1 import common_pb2, vnode_pb2
from controller import errors as faults
from controller.jobs import driver_inbox
from controller.runtime import clock as clock_mod
from controller.services import rpc
from controller.state import view as view_mod
from controller.trust import book as trust

Context = aio.ServicerContext[Any, Any]
M = TypeVar("M", bound=pb_message.Message)


def add_to_server(servicer: DriverInboxService, server: aio.Server) -> None:
    """Like the generated add_VNodeServiceServicer_to_server, but the behaviours get the
    request's raw bytes (a signature covers exactly those)."""
    server.add_generic_rpc_handlers((servicer.handler(),))


class DriverInboxService:
    def __init__(
        self,
        *,
        inbox: driver_inbox.Inbox,
        view: view_mod.View,
        clock: clock_mod.Clock,
        verifier: identity.Verifier,
        replica_id: str,
        max_message_bytes: int = driver_inbox.DEFAULT_MAX_MESSAGE_BYTES,
        book: trust.TrustBook | None = None,
        on_checked: Callable[[bool], None] | None = None,
        on_refused: Callable[[str], None] | None = None,
        mutual_tls: bool = False,
    ) -> None:
        """`on_refused(reason)`: every message refused (see `driver_inbox.Receiver`), those
        that prove no identity too (`api.identity.VERIFY_REASONS`). `mutual_tls`: served on
        a listener that requires a client certificate of the identity CA, so the sender is
        the certificate's and signatures are verified lazily (module docstring)."""
        self._receiver = driver_inbox.Receiver(
            inbox=inbox,
            view=view,
            max_message_bytes=max_message_bytes,
            book=book,
            on_checked=on_checked,
            on_refused=on_refused,
        )
        self._clock = clock
        self._verifier = verifier
        self._on_refused = on_refused or (lambda _reason: None)
        self._replica_id = replica_id
        self._mutual_tls = mutual_tls

    def handler(self) -> Any:
        behaviours: dict[str, signed.RawBehaviour] = {
            "Forward": self.Forward,
            "Backward": self.Backward,
            "Checkpoint": self.Checkpoint,
            "Restore": self.Restore,
            "DescribeData": self.DescribeData,
        }
        return signed.raw_handler(behaviours, deliver=self.Deliver)

    async def Forward(self, body: bytes, context: Context) -> vnode_pb2.ForwardResponse:
        async def behave() -> vnode_pb2.ForwardResponse:
            received = signed.received(signed.full_method("Forward"), body, context)
            header, duplicate = self._receive(received, context, vnode_pb2.ForwardRequest)
            return vnode_pb2.ForwardResponse(header=header, duplicate=duplicate)

        return await _translated(context, behave)

    async def Backward(self, body: bytes, context: Context) -> vnode_pb2.BackwardResponse:
        async def behave() -> vnode_pb2.BackwardResponse:
            received = signed.received(signed.full_method("Backward"), body, context)
            header, duplicate = self._receive(received, context, vnode_pb2.BackwardRequest)
            return vnode_pb2.BackwardResponse(header=header, duplicate=duplicate)

        return await _translated(context, behave)

    async def Deliver(
        self, requests: AsyncIterator[bytes], context: Context
    ) -> AsyncIterator[vnode_pb2.DeliverResponse]:
        """Each message handled as its unary call and answered in order (module docstring).
        The connection's client certificate is read once: one stream, one connection (a
        call's auth context is built anew on every read)."""
        peer = signed.peer_certificate(context) if self._mutual_tls else b""
        async for raw in requests:
            yield self._answer(raw, context, peer)

    def _answer(self, raw: bytes, context: Context, peer: bytes) -> vnode_pb2.DeliverResponse:
        sequence = 0
        try:
            request = _parsed(raw, vnode_pb2.DeliverRequest)
            sequence = request.sequence
            found = signed.streamed(request)
            if found is None:
                raise faults.FieldInvalid(
                    "body", None, "set forward or backward (a serialized request)"
                )
            name, received = found
            kind = vnode_pb2.ForwardRequest if name == "Forward" else vnode_pb2.BackwardRequest
            _header, duplicate = self._receive(received, context, kind, peer)
        except Exception as exc:  # what the unary call would have aborted with
            code, message, reason = rpc.refusal(exc)
            return vnode_pb2.DeliverResponse(
                sequence=sequence,
                code=code.value[0],
                details=common_pb2.ErrorDetails(reason=reason),
                message=message,
            )
        return vnode_pb2.DeliverResponse(sequence=sequence, duplicate=duplicate)

    def _receive(
        self,
        received: common_pb2.SignedMessage,
        context: Context,
        kind: type[vnode_pb2.ForwardRequest] | type[vnode_pb2.BackwardRequest],
        peer: bytes | None = None,
    ) -> tuple[common_pb2.ResponseHeader, bool]:
        """A verified result into the waiting run's mailbox: the answer's header and whether
        it had arrived before. `received`: the message as evidence, from a unary call (its
        signature and certificate in the call's metadata) or a stream (in the message).
        `peer`: the connection's client certificate, if the caller read it already."""
        request, who, prove = self._verified(received, context, kind, peer)
        forward = isinstance(request, vnode_pb2.ForwardRequest)
        duplicate = self._receiver.receive(request, forward=forward, sender=who, prove=prove)
        return rpc.response_header(request.header, self._replica_id), duplicate

    async def Checkpoint(self, body: bytes, context: Context) -> vnode_pb2.CheckpointResponse:
        async def behave() -> vnode_pb2.CheckpointResponse:
            raise _stateless(_parsed(body, vnode_pb2.CheckpointRequest).vnode)

        return await _translated(context, behave)

    async def Restore(self, body: bytes, context: Context) -> vnode_pb2.RestoreResponse:
        async def behave() -> vnode_pb2.RestoreResponse:
            raise _stateless(_parsed(body, vnode_pb2.RestoreRequest).vnode)

        return await _translated(context, behave)

    async def DescribeData(self, body: bytes, context: Context) -> vnode_pb2.DescribeDataResponse:
        async def behave() -> vnode_pb2.DescribeDataResponse:
            request = _parsed(body, vnode_pb2.DescribeDataRequest)
            if request.vnode != driver_inbox.DRIVER:
                raise driver_inbox.not_hosted(request.vnode)
            raise faults.FieldInvalid(
                "vnode", request.vnode, f"{driver_inbox.DRIVER} reads no data: it is no source"
            )

        return await _translated(context, behave)

    def _verified(
        self,
        received: common_pb2.SignedMessage,
        context: Context,
        kind: type[M],
        peer: bytes | None = None,
    ) -> tuple[M, identity.Identity, Callable[[], None] | None]:
        """The sender's identity (before anything else), then the parsed request, and what
        verifies its signature before it becomes evidence (None: verified already)."""
        try:
            if self._mutual_tls:
                if peer is None:
                    peer = signed.peer_certificate(context)
                who, proven = signed.sender(self._verifier, received, peer, self._clock.now())
            else:
                who, proven = signed.verify(self._verifier, received, self._clock.now()), True
        except identity.IdentityError as exc:
            self._on_refused(exc.reason)
            raise _unauthenticated(exc) from None
        request = _parsed(received.body, kind)
        rpc.check_header(getattr(request, "header", common_pb2.RequestHeader()))
        return request, who, None if proven else functools.partial(self._prove, received)

    def _prove(self, received: common_pb2.SignedMessage) -> None:
        """Verify a lazily accepted message's signature now that it may become evidence;
        `controller.errors.Unauthenticated` (the verifier's reason) if it does not."""
        try:
            signed.verify(self._verifier, received, self._clock.now())
        except identity.IdentityError as exc:
            raise _unauthenticated(exc) from None


def _unauthenticated(exc: identity.IdentityError) -> faults.ControllerError:
    if exc.reason == "NotSender":  # a valid identity, not the connection's (docs/security.md)
        return faults.PermissionDenied(
            f"{exc}; a PNode sends only as the identity its connection proved",
            reason=exc.reason,
        )
    return faults.Unauthenticated(
        f"{exc}; every VNodeService request must be signed by its sender's identity "
        "(SIGNED REQUESTS in common.proto)",
        reason=exc.reason,
    )


def _parsed(body: bytes, kind: type[M]) -> M:
    try:
        return kind.FromString(body)
    except Exception as exc:  # DecodeError, recursion limits, bad UTF-8: hostile bytes
        raise faults.InvalidArgument(
            f"request is not a valid {kind.DESCRIPTOR.full_name} ({len(body)} bytes): {exc}",
            reason="Undecodable",
        ) from None


R = TypeVar("R")


async def _translated(context: Context, behave: Callable[[], Awaitable[R]]) -> R:
    """Every failure becomes its status code (`rpc.abort`), as `rpc.handler` does."""
    try:
        return await behave()
    except aio.AbortError:
        raise
    except Exception as exc:
        await rpc.abort(context, exc)
        raise AssertionError("unreachable: abort raises") from exc


def _stateless(vnode: str) -> faults.ControllerError:
    if vnode != driver_inbox.DRIVER:
        return driver_inbox.not_hosted(vnode)
    return faults.FieldInvalid(
        "vnode", vnode, f"{driver_inbox.DRIVER} holds no training state to checkpoint or restore"
    )
