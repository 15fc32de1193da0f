"""The driver's wire to agents: `controller.jobs.vnode_client.Transport` over grpc.aio.

One channel per (agent address, PNode), kept until `close`. Over TLS (the default) it
trusts only the identity CA and expects the certificate of the PNode the view says hosts the
slot (`grpc.ssl_target_name_override` = <pnode>.pnode.dcnr): a man in the middle, or a PNode
answering at another's address, fails the handshake (UNAVAILABLE, retried, then the run
rolls back). It presents this replica's orchestrator identity certificate (agents' listeners
are mutual TLS). `ca` returning None: `serve --data-plane-insecure`, plaintext. Channels are
rebuilt when the CA bundle changes (it cannot while the replica runs: the CA is loaded once
at start) and when the replica's certificate is renewed. Every request is signed with
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

Forward, the one call of every step (the batch to each source), travels on a Deliver
stream (STREAMED DELIVERY in vnode.proto, `api.streams`) per edge (agent channel, network,
target slot), as agents send to each other: the same signed bytes, answered with the code
and reason the unary call would have ended with, which become the same `PeerError`. A
stream that fails as a whole (the connection lost, a deadline passed) fails its unanswered
messages as UNAVAILABLE or DEADLINE_EXCEEDED, retried like a unary call that got no
answer, and the next message opens a new one. An agent answering UNIMPLEMENTED (older than
Deliver) gets unary calls for as long as its channel lives. Restore, Checkpoint and
DescribeData, a few per run, stay unary calls. A stream left idle for STREAM_IDLE seconds is
closed when the next one opens.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc
from google.protobuf import message
from grpc import aio

from api import identity, signed
from api import streams as streams_mod
from api import tls as api_tls
from api.dcnr.v1 import common_pb2, vnode_pb2
from api.resources import meta
from controller.jobs import vnode_client

T = TypeVar("T")
DETAILS_KEY = "dcnr-error-details-bin"
#: Seconds a replaced channel (renewed certificate) keeps serving the calls in flight on it.
RETIRE_GRACE = 60.0
#: Seconds after which a Deliver stream nobody sent on is closed (when another opens).
STREAM_IDLE = 60.0

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
    def __init__(
        self, *, signer: signed.Signer, ca: Callable[[], bytes | None], streams: bool = True
    ) -> None:
        """`streams`: Forward on Deliver streams (module docstring); False: unary calls."""
        self._signer = signer
        self._ca_source = ca
        self._ca: bytes | None = None
        self._generation = -1  # the signer's certificate the cached channels present
        self._retiring: set[asyncio.Task[None]] = set()
        self._channels: dict[tuple[str, str], aio.Channel] = {}
        self._stubs: dict[tuple[str, str], signed.SignedStub] = {}
        self._streaming = streams
        #: By edge: (address, PNode, network, target VNode, target replica).
        self._streams: dict[tuple[str, str, str, str, int], streams_mod.Stream] = {}
        #: Channels whose agent serves no Deliver: unary calls to them.
        self._unary_only: set[aio.Channel] = set()

    async def _stub(self, address: str, pnode: str) -> signed.SignedStub:
        ca = self._ca_source()
        if ca != self._ca or (ca is not None and self._signer.generation != self._generation):
            # A new CA, or a renewed certificate: a channel presents the certificate it was
            # built with (and would present an expired one at its next handshake). Calls in
            # flight on the old channels finish on them.
            self._retire_all()
            self._ca, self._generation = ca, self._signer.generation
        key = (address, pnode)
        stub = self._stubs.get(key)
        if stub is None:
            if ca is None:
                channel = aio.insecure_channel(address)
            else:
                if not pnode:
                    raise vnode_client.PeerError(
                        f"no PNode named for {address}: cannot check its certificate",
                        retryable=False,
                    )
                channel = aio.secure_channel(
                    address,
                    self._signer.client_credentials(ca),
                    [(api_tls.TARGET_NAME_OVERRIDE, identity.dns_name("pnode", pnode))],
                )
            self._channels[key] = channel
            stub = self._stubs[key] = signed.SignedStub(channel, self._signer)
        return stub

    async def forward(
        self, address: str, request: vnode_pb2.ForwardRequest, *, seconds: float, pnode: str = ""
    ) -> vnode_pb2.ForwardResponse:
        stub = await self._stub(address, pnode)
        if self._streaming and stub.channel not in self._unary_only:
            try:
                answer = await self._streamed(stub.channel, (address, pnode), request, seconds)
            except streams_mod.StreamFailed as exc:
                if exc.code != grpc.StatusCode.UNIMPLEMENTED:
                    raise vnode_client.PeerError(
                        f"{exc.code.name}: {exc}", retryable=exc.code in RETRYABLE
                    ) from None
                self._unary_only.add(stub.channel)  # an agent older than Deliver
            else:
                return _forward_response(answer)
        reply: vnode_pb2.ForwardResponse = await _translated(
            stub.call("Forward", request, seconds=seconds)
        )
        return reply

    async def _streamed(
        self,
        channel: aio.Channel,
        route: tuple[str, str],
        request: vnode_pb2.ForwardRequest,
        seconds: float,
    ) -> vnode_pb2.DeliverResponse:
        """`request` on its edge's stream, opened (again) if none is open on `channel`."""
        key = (*route, request.network, request.target_vnode, request.target_replica)
        stream = self._streams.get(key)
        if stream is None or stream.failed is not None or stream.channel is not channel:
            if stream is not None:
                await self._drop_stream(key, stream)
            await self._close_idle_streams()
            stream = self._streams.get(key)
            if stream is None or stream.failed is not None or stream.channel is not channel:
                # (another message of the edge may have opened one meanwhile)
                stream = self._streams[key] = streams_mod.Stream(channel, header=_HEADER)
        try:
            return await stream.send(
                self._signer, "Forward", request.SerializeToString(), seconds=seconds
            )
        except streams_mod.StreamFailed:
            await self._drop_stream(key, stream)
            raise

    async def _drop_stream(
        self, key: tuple[str, str, str, str, int], stream: streams_mod.Stream
    ) -> None:
        """Close `stream` and, if it is still the edge's, forget it."""
        if self._streams.get(key) is stream:
            del self._streams[key]
        await stream.close()

    async def _close_idle_streams(self) -> None:
        idle_since = time.monotonic() - STREAM_IDLE
        for key, stream in list(self._streams.items()):
            if stream.failed is not None or (
                stream.unanswered == 0 and stream.last_used < idle_since
            ):
                await self._drop_stream(key, stream)

    async def restore(
        self, address: str, request: vnode_pb2.RestoreRequest, *, seconds: float, pnode: str = ""
    ) -> vnode_pb2.RestoreResponse:
        call = (await self._stub(address, pnode)).call("Restore", request, seconds=seconds)
        reply: vnode_pb2.RestoreResponse = await _translated(call)
        return reply

    async def checkpoint(
        self, address: str, request: vnode_pb2.CheckpointRequest, *, seconds: float, pnode: str = ""
    ) -> vnode_pb2.CheckpointResponse:
        call = (await self._stub(address, pnode)).call("Checkpoint", request, seconds=seconds)
        reply: vnode_pb2.CheckpointResponse = await _translated(call)
        return reply

    async def describe_data(
        self,
        address: str,
        request: vnode_pb2.DescribeDataRequest,
        *,
        seconds: float,
        pnode: str = "",
    ) -> vnode_pb2.DescribeDataResponse:
        call = (await self._stub(address, pnode)).call("DescribeData", request, seconds=seconds)
        reply: vnode_pb2.DescribeDataResponse = await _translated(call)
        return reply

    def _retire_all(self) -> None:
        """Drop every cached channel; each closes once its calls in flight are done. Its
        streams are closed (their unanswered messages fail UNAVAILABLE and are retried on
        the new channels)."""
        channels, self._channels = self._channels, {}
        self._stubs = {}
        self._unary_only.clear()
        open_streams, self._streams = list(self._streams.values()), {}
        for stream in open_streams:
            task = asyncio.get_running_loop().create_task(stream.close())
            self._retiring.add(task)
            task.add_done_callback(self._retiring.discard)
        for channel in channels.values():
            task = asyncio.get_running_loop().create_task(channel.close(RETIRE_GRACE))
            self._retiring.add(task)
            task.add_done_callback(self._retiring.discard)

    async def close(self) -> None:
        open_streams, self._streams = list(self._streams.values()), {}
        for stream in open_streams:
            await stream.close()
        self._unary_only.clear()
        channels, self._channels = self._channels, {}
        self._stubs = {}
        for channel in channels.values():
            await channel.close(None)
        for task in list(self._retiring):
            task.cancel()
        await asyncio.gather(*self._retiring, return_exceptions=True)


_HEADER = common_pb2.RequestHeader(api_version=meta.API_VERSION, client_name="dcnr-orchestrator")
_STATUS = {code.value[0]: code for code in grpc.StatusCode}


def _forward_response(answer: vnode_pb2.DeliverResponse) -> vnode_pb2.ForwardResponse:
    """A streamed Forward's answer as its unary call's: the response, or its `PeerError`."""
    if answer.code != grpc.StatusCode.OK.value[0]:
        code = _STATUS.get(answer.code, grpc.StatusCode.UNKNOWN)
        raise vnode_client.PeerError(
            f"{code.name}: {answer.message}",
            retryable=code in RETRYABLE,
            reason=answer.details.reason,
        )
    return vnode_pb2.ForwardResponse(duplicate=answer.duplicate)


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
