"""The driver's wire to agents: `controller.jobs.vnode_client.Transport` over grpc.aio.

One insecure channel per agent address, kept until `close`. Every request is signed with
this replica's orchestrator identity (`api.signed`: serialized once, signed over those
bytes, sent as those bytes), which is how agents know a Restore, Checkpoint or driver input
comes from the job's driver. A failed call is raised as a
`PeerError` ("CODE: details"), retryable when the cause may pass:

    UNAVAILABLE          the agent is restarting, or the connection was reset
    DEADLINE_EXCEEDED    the call's timeout passed
    DATA_LOSS            bytes corrupted in transit: sending again may get them through
    FAILED_PRECONDITION  the epoch addressed is stale: the client re-reads the endpoint

Any other code is the agent refusing the message for good. The agent's ErrorDetails reason
(trailing metadata `dcnr-error-details-bin`) rides along as `PeerError.reason`, so the
driver can tell data that cannot be read ("DataError": the job fails) from a VNode not
hosted yet (a rollback waits for it).
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any, TypeVar

import grpc
from google.protobuf import message
from grpc import aio

from api import signed
from api.dcnr.v1 import common_pb2, vnode_pb2
from controller.jobs import vnode_client

T = TypeVar("T")
DETAILS_KEY = "dcnr-error-details-bin"

#: Failures that may pass. NOT_FOUND among them: the view (and resolution) name a slot's
#: PNode as soon as the placement is written, a moment before that PNode has heard of its
#: assignment, and it answers NOT_FOUND until then. A slot that really moved changes the
#: view's endpoint, which the retry reads again; one that is gone fails at the deadline.
RETRYABLE = frozenset(
    {
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.DATA_LOSS,
        grpc.StatusCode.FAILED_PRECONDITION,
    }
)


class GrpcTransport:
    def __init__(self, *, signer: signed.Signer) -> None:
        self._signer = signer
        self._channels: dict[str, aio.Channel] = {}
        self._stubs: dict[str, signed.SignedStub] = {}

    def _stub(self, address: str) -> signed.SignedStub:
        stub = self._stubs.get(address)
        if stub is None:
            channel = self._channels[address] = aio.insecure_channel(address)
            stub = self._stubs[address] = signed.SignedStub(channel, self._signer)
        return stub

    async def forward(
        self, address: str, request: vnode_pb2.ForwardRequest, *, seconds: float
    ) -> vnode_pb2.ForwardResponse:
        call = self._stub(address).call("Forward", request, seconds=seconds)
        reply: vnode_pb2.ForwardResponse = await _translated(call)
        return reply

    async def restore(
        self, address: str, request: vnode_pb2.RestoreRequest, *, seconds: float
    ) -> vnode_pb2.RestoreResponse:
        call = self._stub(address).call("Restore", request, seconds=seconds)
        reply: vnode_pb2.RestoreResponse = await _translated(call)
        return reply

    async def checkpoint(
        self, address: str, request: vnode_pb2.CheckpointRequest, *, seconds: float
    ) -> vnode_pb2.CheckpointResponse:
        call = self._stub(address).call("Checkpoint", request, seconds=seconds)
        reply: vnode_pb2.CheckpointResponse = await _translated(call)
        return reply

    async def describe_data(
        self, address: str, request: vnode_pb2.DescribeDataRequest, *, seconds: float
    ) -> vnode_pb2.DescribeDataResponse:
        call = self._stub(address).call("DescribeData", request, seconds=seconds)
        reply: vnode_pb2.DescribeDataResponse = await _translated(call)
        return reply

    async def close(self) -> None:
        channels, self._channels = self._channels, {}
        self._stubs = {}
        for channel in channels.values():
            await channel.close(None)


async def _translated(call: Awaitable[T]) -> T:
    try:
        return await call
    except aio.AioRpcError as exc:
        code = exc.code()
        raise vnode_client.PeerError(
            f"{code.name}: {exc.details()}", retryable=code in RETRYABLE, reason=_reason(exc)
        ) from None


def _reason(exc: aio.AioRpcError) -> str:
    """The ErrorDetails reason the agent attached (common.proto rule 8), if it did."""
    trailing: Any = exc.trailing_metadata() or ()
    for key, value in trailing:
        if key == DETAILS_KEY and isinstance(value, bytes):
            try:
                return common_pb2.ErrorDetails.FromString(value).reason
            except message.DecodeError:
                return ""
    return ""
