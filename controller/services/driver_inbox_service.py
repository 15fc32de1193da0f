"""VNodeService as the orchestrator serves it: for `__driver__` only.

The wire side of the driver's inbox: each Forward or Backward is handed to
`controller.jobs.driver_inbox.Receiver`, which checks it and files it for the run waiting
for it; its refusals (`controller.errors`) become status codes in `rpc`. Checkpoint and
Restore are refused: the driver holds no training state.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from grpc import aio

from api.dcnr.v1 import vnode_pb2, vnode_pb2_grpc
from controller import errors as faults
from controller.jobs import driver_inbox
from controller.services import rpc
from controller.state import view as view_mod
from controller.trust import book as trust


class DriverInboxService(vnode_pb2_grpc.VNodeServiceServicer):
    def __init__(
        self,
        *,
        inbox: driver_inbox.Inbox,
        view: view_mod.View,
        replica_id: str,
        max_message_bytes: int = driver_inbox.DEFAULT_MAX_MESSAGE_BYTES,
        book: trust.TrustBook | None = None,
        on_checked: Callable[[bool], None] | None = None,
        on_refused: Callable[[str], None] | None = None,
    ) -> None:
        """`on_refused(reason)`: every message refused (see `driver_inbox.Receiver`)."""
        self._receiver = driver_inbox.Receiver(
            inbox=inbox,
            view=view,
            max_message_bytes=max_message_bytes,
            book=book,
            on_checked=on_checked,
            on_refused=on_refused,
        )
        self._replica_id = replica_id

    @rpc.handler
    async def Forward(
        self, request: vnode_pb2.ForwardRequest, context: aio.ServicerContext[Any, Any]
    ) -> vnode_pb2.ForwardResponse:
        duplicate = self._receiver.receive(request, forward=True)
        return vnode_pb2.ForwardResponse(
            header=rpc.response_header(request.header, self._replica_id), duplicate=duplicate
        )

    @rpc.handler
    async def Backward(
        self, request: vnode_pb2.BackwardRequest, context: aio.ServicerContext[Any, Any]
    ) -> vnode_pb2.BackwardResponse:
        duplicate = self._receiver.receive(request, forward=False)
        return vnode_pb2.BackwardResponse(
            header=rpc.response_header(request.header, self._replica_id), duplicate=duplicate
        )

    @rpc.handler
    async def Checkpoint(
        self, request: vnode_pb2.CheckpointRequest, context: aio.ServicerContext[Any, Any]
    ) -> vnode_pb2.CheckpointResponse:
        raise _stateless(request.vnode)

    @rpc.handler
    async def Restore(
        self, request: vnode_pb2.RestoreRequest, context: aio.ServicerContext[Any, Any]
    ) -> vnode_pb2.RestoreResponse:
        raise _stateless(request.vnode)

    @rpc.handler
    async def DescribeData(
        self, request: vnode_pb2.DescribeDataRequest, context: aio.ServicerContext[Any, Any]
    ) -> vnode_pb2.DescribeDataResponse:
        if request.vnode != driver_inbox.DRIVER:
            raise driver_inbox.not_hosted(request.vnode)
        raise faults.FieldInvalid(
            "vnode", request.vnode, f"{driver_inbox.DRIVER} reads no data: it is no source"
        )


def _stateless(vnode: str) -> faults.ControllerError:
    if vnode != driver_inbox.DRIVER:
        return driver_inbox.not_hosted(vnode)
    return faults.FieldInvalid(
        "vnode", vnode, f"{driver_inbox.DRIVER} holds no training state to checkpoint or restore"
    )
