"""VNodeService as the orchestrator serves it: for `__driver__` only.

The wire side of the driver's inbox. Every Forward and Backward is signed by its sender
(SIGNED REQUESTS in common.proto): the handler takes the raw request bytes (`api.signed`),
verifies the signature and the certificate against the identity CA before anything else
(no signature, a certificate the CA never issued, an expired one: UNAUTHENTICATED, with the
verifier's reason), and only then parses the request and hands it, with the sender's
identity, to `controller.jobs.driver_inbox.Receiver`, which checks that identity hosts the
sending slot at its epoch and that a run waits for the message before any decoding, check
or strike. Every refusal is counted by reason (`on_refused`) and becomes a status code in
`rpc`. Checkpoint and Restore are refused: the driver holds no training state.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
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
    ) -> None:
        """`on_refused(reason)`: every message refused (see `driver_inbox.Receiver`), those
        that prove no identity too (`api.identity.VERIFY_REASONS`)."""
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

    def handler(self) -> Any:
        behaviours: dict[str, signed.RawBehaviour] = {
            "Forward": self.Forward,
            "Backward": self.Backward,
            "Checkpoint": self.Checkpoint,
            "Restore": self.Restore,
            "DescribeData": self.DescribeData,
        }
        return signed.raw_handler(behaviours)

    async def Forward(self, body: bytes, context: Context) -> vnode_pb2.ForwardResponse:
        async def behave() -> vnode_pb2.ForwardResponse:
            header, duplicate = self._receive("Forward", body, context, vnode_pb2.ForwardRequest)
            return vnode_pb2.ForwardResponse(header=header, duplicate=duplicate)

        return await _translated(context, behave)

    async def Backward(self, body: bytes, context: Context) -> vnode_pb2.BackwardResponse:
        async def behave() -> vnode_pb2.BackwardResponse:
            header, duplicate = self._receive("Backward", body, context, vnode_pb2.BackwardRequest)
            return vnode_pb2.BackwardResponse(header=header, duplicate=duplicate)

        return await _translated(context, behave)

    def _receive(
        self,
        method: str,
        body: bytes,
        context: Context,
        kind: type[vnode_pb2.ForwardRequest] | type[vnode_pb2.BackwardRequest],
    ) -> tuple[common_pb2.ResponseHeader, bool]:
        """A verified result into the waiting run's mailbox: the answer's header and whether
        it had arrived before."""
        request, who = self._verified(method, body, context, kind)
        duplicate = self._receiver.receive(request, forward=method == "Forward", sender=who)
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
        self, name: str, body: bytes, context: Context, kind: type[M]
    ) -> tuple[M, identity.Identity]:
        """The sender's identity (before anything else), then the parsed request."""
        received = signed.received(signed.full_method(name), body, context)
        try:
            who = signed.verify(self._verifier, received, self._clock.now())
        except identity.IdentityError as exc:
            self._on_refused(exc.reason)
            raise faults.Unauthenticated(
                f"{exc}; every VNodeService request must be signed by its sender's identity "
                "(SIGNED REQUESTS in common.proto)",
                reason=exc.reason,
            ) from None
        request = _parsed(body, kind)
        rpc.check_header(getattr(request, "header", common_pb2.RequestHeader()))
        return request, who


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
