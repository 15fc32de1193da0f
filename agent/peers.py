"""Reaching other VNodes: resolution through the orchestrator, cached, and delivery with retries.

A message's target moves (re-placement bumps its epoch) and peers come and go, so delivery
is a loop: resolve (cached per (network, vnode)), send, and on a refusal that means "not
there any more" (FAILED_PRECONDITION for a stale epoch, NOT_FOUND, UNAVAILABLE) forget the
cached answer and resolve again, with bounded exponential backoff and jitter, until an
overall deadline. Refusals that a retry cannot cure (a stale attempt: the run was
superseded; a malformed message; too large) end delivery at once.

The driver ("__driver__") is not resolved: it listens at the message's `reply_to`, on the
orchestrator's own listener, so it is dialled with the orchestrator's TLS settings; or, when
Register said so (`RegisterResponse.driver_mutual_tls`, `serve --driver-listen`), on a
mutual-TLS listener dialled like a peer's, expecting the name orchestrator.dcnr.

Peers are dialled over mutual TLS (docs/security.md, "Transport (TLS)"): the channel
trusts only the identity CA bundle (`client_ca`, from Register), expects the certificate of
the PNode resolution named for the slot (`grpc.ssl_target_name_override` =
<pnode>.pnode.dcnr), so a man in the middle, or a PNode answering at another's address,
fails the handshake, and presents this PNode's identity certificate, which is how the
receiver knows who sends. Channels are cached per (address, PNode) and rebuilt when the CA
bundle changes (only a replaced CA changes it) or the certificate is renewed. `client_ca`
returning None means the orchestrator runs the cluster's data plane plaintext (`serve
--data-plane-insecure`).

Every message is signed with this PNode's identity (`api.signed`, `agent.keys`): serialized
once per attempt (the target epoch may change between attempts), signed over those bytes
and sent as them.

VNodes hosted by this same agent are delivered in process (`local`, set by the agent to its
`agent.dataplane.DataPlane`): the route is resolved exactly as for a remote target (the
target epoch comes from resolution, and a StaleEpoch refusal re-resolves), and when it names
this PNode the message is handed to the data plane with its array, neither encoded, signed,
serialized nor sent. The data plane applies every check a remote delivery gets (see
`DataPlane.deliver_local`) and refuses with the same reasons, which drive the same retries.
A message whose route names another PNode has its tensor encoded once, on its first remote
attempt.

Messages to peers and to the driver travel on Deliver streams (STREAMED DELIVERY in
vnode.proto, `api.streams`): one per edge (peer channel, sending slot, target slot; the
driver's edge is its inbox's channel and `__driver__`), so a message never
waits behind another edge's, opened on the edge's first message and opened again after it
fails, each message signed exactly as its unary call would be and answered with the code
and reason that call would have ended with, so everything below (retries, final reasons,
re-resolution) is the same for both. A peer that answers UNIMPLEMENTED (an agent or an
orchestrator older than Deliver) gets unary calls for as long as its channel lives. Each
message still has its own deadline: the time left of its delivery,
at most 10 s. A stream left idle for STREAM_IDLE seconds is closed when the next one opens
(edges come and go with placement). `streams=False` (`dcnr-agent --no-stream-delivery`):
unary calls only.

Receivers say why they refused in the ErrorDetails of trailing metadata
`dcnr-error-details-bin` (common.proto rule 8): reason "StaleEpoch" is retried after
re-resolving, "StaleAttempt", "NoForward", "VNodeFailed" and "SenderSuperseded" (this
replica's slot has moved on) are final.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import grpc
import numpy as np
from grpc import aio

from api import identity, signed, tensors
from api import streams as streams_mod
from api import tls as api_tls
from api.dcnr.v1 import common_pb2, resolve_pb2, resolve_pb2_grpc, vnode_pb2

log = logging.getLogger("dcnr.agent.peers")

DRIVER = "__driver__"
DETAILS_KEY = "dcnr-error-details-bin"
FINAL_REASONS = frozenset({"StaleAttempt", "NoForward", "VNodeFailed", "SenderSuperseded"})
_RETRIED = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.DATA_LOSS,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.FAILED_PRECONDITION,
    }
)


def header() -> common_pb2.RequestHeader:
    return common_pb2.RequestHeader(api_version="dcnr.io/v1", client_name="dcnr-agent")


def channel_options(max_message_bytes: int) -> list[tuple[str, Any]]:
    # Room above the tensor limit for the message's other fields.
    limit = max_message_bytes + (1 << 20)
    return [
        ("grpc.max_send_message_length", limit),
        ("grpc.max_receive_message_length", limit),
    ]


def _refusal(exc: aio.AioRpcError | Refused) -> tuple[grpc.StatusCode, str, str]:
    """(code, ErrorDetails reason, details) of a refusal, remote or in process."""
    if isinstance(exc, Refused):
        return exc.code, exc.reason, str(exc)
    return exc.code(), error_reason(exc), exc.details() or ""


def error_reason(exc: grpc.RpcError) -> str:
    """The ErrorDetails reason a receiver attached to its refusal, or ""."""
    if not isinstance(exc, aio.AioRpcError):
        return ""
    trailing: Any = exc.trailing_metadata() or ()
    for key, value in trailing:
        if key == DETAILS_KEY and isinstance(value, bytes):
            try:
                return common_pb2.ErrorDetails.FromString(value).reason
            except Exception:  # a garbled detail is no reason to crash delivery
                return ""
    return ""


#: Seconds after which a Deliver stream nobody sent on is closed (when another opens).
STREAM_IDLE = 60.0
#: What happens to Deliver streams (`Peers.on_stream`): opened; failed (the connection
#: lost, a message's deadline passed); unimplemented (the peer serves no Deliver: unary
#: calls to it); closed (idle for STREAM_IDLE, or its channel replaced on a renewal).
STREAM_EVENTS = ("opened", "failed", "unimplemented", "closed")
#: How long a channel left behind by a fail-over lets the calls on it finish (every unary
#: call to the orchestrator has a shorter timeout) before it is closed.
RETIRE_GRACE = 15.0


class Orchestrators:
    """The orchestrator replicas an agent talks to, the first preferred; on UNAVAILABLE
    the agent moves to the next, as behind a load balancer. With `tls`, every channel to
    them verifies the orchestrator's certificate (and presents the agent's, for mutual
    TLS); the files are read here, once, so bad ones fail at start (`TlsError`).

    Every call takes the current channel from `channel()` when it starts, so after a
    fail-over each loop's next call goes to the new replica. The channel left behind is
    retired, not closed: closing it would cancel the calls other loops have in flight on
    it (an asyncio.CancelledError out of an RPC, which a caller could mistake for its own
    cancellation). It stops taking calls at once, and is closed after RETIRE_GRACE or when
    its last call ends. Streams have no end of their own: `on_fail_over(address)` tells
    their owners to cancel them and reconnect."""

    def __init__(
        self, addresses: Sequence[str], *, tls: api_tls.ClientFiles | None = None
    ) -> None:
        if not addresses:
            raise ValueError("at least one orchestrator address is needed")
        self.addresses = list(addresses)
        self._channel: aio.Channel | None = None
        self._retiring: dict[asyncio.Task[None], aio.Channel] = {}
        #: Called with the new address after each fail-over.
        self.on_fail_over: Callable[[str], None] = lambda _address: None
        self._credentials = tls.credentials() if tls is not None else None
        self._tls_options = tls.options() if tls is not None else []
        #: This PNode's credential once registered: resolution answers only PNodes hosting
        #: part of the network asked about (and token holders).
        self.credential = ""

    def dial(self, address: str, options: Sequence[tuple[str, Any]] = ()) -> aio.Channel:
        """A channel to an orchestrator's listener (its API, or its job driver's inbox)."""
        if self._credentials is None:
            return aio.insecure_channel(address, list(options))
        return aio.secure_channel(
            address, self._credentials, [*options, *self._tls_options]
        )

    def metadata(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.credential}"),) if self.credential else ()

    @property
    def address(self) -> str:
        return self.addresses[0]

    def channel(self) -> aio.Channel:
        if self._channel is None:
            self._channel = self.dial(self.address)
        return self._channel

    async def fail_over(self, failed: aio.Channel | None = None) -> None:
        """Move to the next address, unless someone already moved away from `failed`."""
        if failed is not None and failed is not self._channel:
            return
        old, self._channel = self._channel, None
        self.addresses = [*self.addresses[1:], self.addresses[0]]
        self.on_fail_over(self.address)
        if old is not None:
            task = asyncio.create_task(old.close(RETIRE_GRACE), name="retire-channel")
            self._retiring[task] = old
            task.add_done_callback(lambda done: self._retiring.pop(done, None))

    async def close(self) -> None:
        """Close every channel, cancelling what is still in flight on them."""
        retiring = dict(self._retiring)
        channels = [*retiring.values(), *([self._channel] if self._channel is not None else [])]
        self._channel = None
        for channel in channels:
            await channel.close(None)
        for task in retiring:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


@dataclass(frozen=True)
class Retry:
    attempts: int = 12
    deadline: float = 30.0
    first_delay: float = 0.02
    max_delay: float = 2.0


class DeliveryFailed(Exception):
    pass


class Refused(Exception):
    """A delivery refused (or not answered) other than by a unary call's status: the status
    code and ErrorDetails reason a unary call would have ended with."""

    def __init__(self, code: grpc.StatusCode, reason: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason


class LocalRefused(Refused):
    """An in-process delivery refused, with the status code and ErrorDetails reason a
    remote receiver would have answered."""


_STATUS = {code.value[0]: code for code in grpc.StatusCode}


def _answered(answer: vnode_pb2.DeliverResponse) -> None:
    """Raise the refusal a Deliver stream's answer carries (as its unary call would have)."""
    if answer.code == grpc.StatusCode.OK.value[0]:
        return
    code = _STATUS.get(answer.code, grpc.StatusCode.UNKNOWN)
    raise Refused(code, answer.details.reason, answer.message)


Request = vnode_pb2.ForwardRequest | vnode_pb2.BackwardRequest


class Local(Protocol):
    """What in-process delivery needs of the agent's data plane."""

    def is_self(self, pnode: str) -> bool: ...

    async def deliver_local(
        self, request: Request, array: np.ndarray | None, *, forward: bool
    ) -> bool: ...


class Peers:
    def __init__(
        self,
        orchestrators: Orchestrators,
        *,
        signer: signed.Signer,
        client_ca: Callable[[], bytes | None],
        max_message_bytes: int,
        driver_mutual_tls: Callable[[], bool] = lambda: False,
        retry: Retry | None = None,
        rng: random.Random | None = None,
        streams: bool = True,
        stream_limit: int = streams_mod.DEFAULT_LIMIT,
    ) -> None:
        """`streams`: deliver to peers on Deliver streams (module docstring), at most
        `stream_limit` messages unanswered on each; False: a unary call per message."""
        self._orchestrators = orchestrators
        self._signer = signer
        self._client_ca = client_ca
        self._driver_mutual_tls = driver_mutual_tls
        self._ca: bytes | None = None  # the bundle the cached peer channels trust
        self._generation = -1  # the signer's certificate the cached peer channels present
        self._retiring: set[asyncio.Task[None]] = set()
        #: By (address, PNode, mutual TLS with identity certificates).
        self._stubs: dict[tuple[str, str, bool], signed.SignedStub] = {}
        self._options = channel_options(max_message_bytes)
        self._retry = retry or Retry()
        self._rng = rng or random.Random()
        self._channels: dict[tuple[str, str, bool], aio.Channel] = {}
        self._cache: dict[tuple[str, str], resolve_pb2.VNodeEndpoints] = {}
        #: The data plane of this agent, for VNodes hosted here (module docstring); None:
        #: every delivery goes over gRPC.
        self.local: Local | None = None
        self._streaming = streams
        self._stream_limit = stream_limit
        #: By edge: (address, PNode, network, sender VNode and replica, target VNode and
        #: replica).
        self._streams: dict[tuple[str, str, str, str, int, str, int], streams_mod.Stream] = {}
        #: Channels whose peer does not serve Deliver: unary calls to them.
        self._unary_only: set[aio.Channel] = set()
        #: Each stream opened, and how each ended (STREAM_EVENTS), for `agent.metrics`.
        self.on_stream: Callable[[str], None] = lambda _event: None

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

    def _retire(self, channel: aio.Channel) -> None:
        """Close `channel` once its calls in flight are done (at most a delivery deadline)."""
        self._unary_only.discard(channel)
        task = asyncio.get_running_loop().create_task(channel.close(self._retry.deadline))
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    # -- resolution -------------------------------------------------------------------------

    def forget(self, network: str, vnode: str) -> None:
        self._cache.pop((network, vnode), None)

    async def resolve(
        self, network: str, vnode: str, replica: int, *, min_epoch: int = 0
    ) -> resolve_pb2.Endpoint | None:
        key = (network, vnode)
        cached = self._cache.get(key)
        # A replica the cached answer lacks may have been placed since (a tiebreaker).
        if cached is None or min_epoch or all(e.replica != replica for e in cached.endpoints):
            channel = self._orchestrators.channel()
            stub = resolve_pb2_grpc.ResolutionServiceStub(channel)
            request = resolve_pb2.ResolveRequest(
                header=header(), network=network, vnode=vnode, min_epoch=min_epoch
            )
            try:
                reply = await stub.Resolve(
                    request, metadata=self._orchestrators.metadata(), timeout=5
                )
            except grpc.RpcError as exc:
                if isinstance(exc, aio.AioRpcError) and exc.code() in (
                    grpc.StatusCode.UNAVAILABLE,
                    grpc.StatusCode.DEADLINE_EXCEEDED,
                ):
                    await self._orchestrators.fail_over(channel)
                raise
            cached = reply.endpoints
            if cached.endpoints:  # never cache "being placed": ask again next time
                self._cache[key] = cached
        return next((e for e in cached.endpoints if e.replica == replica), None)

    async def _stub(self, address: str, pnode: str) -> signed.SignedStub:
        """A signing stub for the PNode `pnode` at `address`; pnode DRIVER: the driver's
        inbox, reached as the orchestrators are (TLS when they are), or, when Register said
        the drivers' inboxes serve mutual TLS (`driver_mutual_tls`), like a peer: presenting
        this PNode's identity and expecting the orchestrator identity's name."""
        mutual = pnode != DRIVER or self._driver_mutual_tls()
        ca = self._client_ca() if mutual else None
        if mutual and (
            ca != self._ca or (ca is not None and self._signer.generation != self._generation)
        ):
            # A replaced identity CA (no cached peer channel trusts it), or a renewed
            # certificate (a channel presents the one it was built with, and would present
            # an expired one at its next handshake): new channels; calls in flight on the
            # old ones finish on them.
            stale = [k for k in self._channels if k[2]]
            for k in stale:
                self._stubs.pop(k, None)
                self._retire(self._channels.pop(k))
            self._ca, self._generation = ca, self._signer.generation
        key = (address, pnode, mutual)
        stub = self._stubs.get(key)
        if stub is None:
            if not mutual:
                channel = self._orchestrators.dial(address, self._options)
            elif ca is None:
                channel = aio.insecure_channel(address, self._options)
            else:
                name = (
                    identity.dns_name("orchestrator", identity.ORCHESTRATOR)
                    if pnode == DRIVER
                    else identity.dns_name("pnode", pnode)
                )
                channel = aio.secure_channel(
                    address,
                    self._signer.client_credentials(ca),
                    [*self._options, (api_tls.TARGET_NAME_OVERRIDE, name)],
                )
            self._channels[key] = channel
            stub = self._stubs[key] = signed.SignedStub(channel, self._signer)
        return stub

    # -- delivery ---------------------------------------------------------------------------

    async def send_forward(
        self, request: vnode_pb2.ForwardRequest, array: np.ndarray | None = None
    ) -> bool:
        """Deliver; True if delivered (or already there), False if given up. `array`: the
        tensor, when `request.tensor` is left unset (encoded only if sent over gRPC); None
        with the tensor unset: the empty marker."""
        return await self._deliver(request, array, forward=True)

    async def send_backward(
        self, request: vnode_pb2.BackwardRequest, array: np.ndarray | None = None
    ) -> bool:
        return await self._deliver(request, array, forward=False)

    async def _deliver(self, request: Request, array: np.ndarray | None, *, forward: bool) -> bool:
        retry = self._retry
        started = time.monotonic()
        delay = retry.first_delay
        min_epoch = 0
        what = f"{'forward' if forward else 'backward'} {request.network}/{request.target_vnode}"
        last = "no attempt made"
        for attempt in range(retry.attempts):
            if attempt:
                remaining = retry.deadline - (time.monotonic() - started)
                if remaining <= 0:
                    break
                await asyncio.sleep(min(remaining, delay * (0.5 + self._rng.random())))
                delay = min(retry.max_delay, delay * 2)
            try:
                route = await self._route(request, min_epoch)
            except grpc.RpcError as exc:
                last = f"resolving: {exc}"
                continue
            if route is None:
                last = "no live replica (being placed)"
                continue
            try:
                await self._call(request, array, route, forward=forward, started=started)
                return True
            except (aio.AioRpcError, Refused) as exc:
                code, reason, details = _refusal(exc)
                last = f"{code.name}: {details}"
                if code not in _RETRIED or reason in FINAL_REASONS:
                    log.warning("%s: given up: %s", what, last)
                    return False
                if request.target_vnode != DRIVER:
                    self.forget(request.network, request.target_vnode)
                    if reason == "StaleEpoch":
                        min_epoch = request.target_epoch
        log.warning("%s: given up after retries: %s", what, last)
        return False

    async def _call(
        self,
        request: Request,
        array: np.ndarray | None,
        route: tuple[str, str],
        *,
        forward: bool,
        started: float,
    ) -> None:
        """One attempt: in process when the route names this PNode, else over gRPC."""
        local = self.local
        if local is not None and request.target_vnode != DRIVER and local.is_self(route[1]):
            await local.deliver_local(request, array, forward=forward)
            return
        if not request.HasField("tensor"):
            request.tensor.CopyFrom(tensors.empty() if array is None else tensors.encode(array))
        stub = await self._stub(*route)
        timeout = min(10.0, max(0.1, self._retry.deadline - (time.monotonic() - started)))
        method = "Forward" if forward else "Backward"
        if self._streaming and stub.channel not in self._unary_only:
            try:
                await self._stream_call(stub.channel, route, request, method, seconds=timeout)
                return
            except streams_mod.StreamFailed as exc:
                if exc.code != grpc.StatusCode.UNIMPLEMENTED:
                    raise Refused(exc.code, "", str(exc)) from None
                log.info("%s at %s serves no Deliver stream: unary calls to it", *route[::-1])
                self._unary_only.add(stub.channel)
        await stub.call(method, request, seconds=timeout)

    async def _stream_call(
        self,
        channel: aio.Channel,
        route: tuple[str, str],
        request: Request,
        method: str,
        *,
        seconds: float,
    ) -> None:
        """One attempt on the edge's Deliver stream, opened (again) if there is none open
        on `channel`; `Refused` with the answer's code and reason if refused."""
        key = (*route, request.network, request.sender_vnode, request.sender_replica,
               request.target_vnode, request.target_replica)  # fmt: skip
        stream = self._streams.get(key)
        if stream is None or stream.failed is not None or stream.channel is not channel:
            if stream is not None:
                await self._drop_stream(key, stream)
            await self._close_idle_streams()
            stream = self._streams[key] = streams_mod.Stream(
                channel, header=header(), limit=self._stream_limit
            )
            self.on_stream("opened")
        try:
            answer = await stream.send(
                self._signer, method, request.SerializeToString(), seconds=seconds
            )
        except streams_mod.StreamFailed:
            await self._drop_stream(key, stream)
            raise
        _answered(answer)

    async def _drop_stream(self, key: Any, stream: streams_mod.Stream) -> None:
        """Close `stream` and, if it is still the edge's, forget it, counting how it ended."""
        if self._streams.get(key) is stream:
            del self._streams[key]
            if stream.failed is None:
                self.on_stream("closed")
            elif stream.failed.code == grpc.StatusCode.UNIMPLEMENTED:
                self.on_stream("unimplemented")
            else:
                self.on_stream("failed")
        await stream.close()

    async def _close_idle_streams(self) -> None:
        idle_since = time.monotonic() - STREAM_IDLE
        for key, stream in list(self._streams.items()):
            if stream.failed is not None or (
                stream.unanswered == 0 and stream.last_used < idle_since
            ):
                await self._drop_stream(key, stream)

    async def _route(
        self, request: vnode_pb2.ForwardRequest | vnode_pb2.BackwardRequest, min_epoch: int
    ) -> tuple[str, str] | None:
        """The (address, PNode) to send to (PNode DRIVER for the driver), after setting the
        request's target_epoch."""
        if request.target_vnode == DRIVER:
            return (request.reply_to, DRIVER) if request.reply_to else None
        endpoint = await self.resolve(
            request.network, request.target_vnode, request.target_replica, min_epoch=min_epoch
        )
        if endpoint is None:
            return None
        request.target_epoch = endpoint.epoch
        return endpoint.address, endpoint.pnode_id
