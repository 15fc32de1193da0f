"""Admission limits at the gRPC boundary: who may call how often, before any work is done.

Two kinds of token bucket (`controller.runtime.ratelimit`), both refusing with
RESOURCE_EXHAUSTED (reason `RateLimited`) and a message naming the limit:

    Register                      per source address (the peer's IPv4 address, or the /64
                                  of its IPv6 address: one host often holds a whole /64),
                                  without port: anonymous registration stays open but
                                  bounded.
    Heartbeat, Resolve,           per caller identity: the presented bearer credential (a
      BatchResolve, WatchEndpoints, PNode's credential or a token), else the source address.
      ReportResult                  One caller cannot starve the others; a caller cannot
                                  spend another's budget without holding its credential.
                                  And per source address at ADDRESS_FACTOR times that
                                  limit: the credential is not verified here, so a caller
                                  inventing a new one per call gets a fresh bucket each
                                  time, but never more than its address's budget; honest
                                  PNodes sharing an address (a NAT) have ten times the room.

The caller identity is a digest of the credential, so the table never holds secrets. Every
table is bounded (`max_keys` buckets each, idle ones evicted), whatever callers do.

The limits wrap the handler behaviour (the peer address is only known there), once per
method (`rpc_timer.Rewrapped`); a refusal costs one dictionary lookup and never reaches the
service, the view or the store. Refusals are counted by `on_refused(method, reason)`
(`dcnr_rpc_refused_total{method, reason}`).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import ipaddress
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeAlias

import grpc
from grpc import aio

from controller import errors as faults
from controller.runtime import clock as clock_mod
from controller.runtime import ratelimit
from controller.services import rpc, rpc_timer

Handler: TypeAlias = "grpc.RpcMethodHandler[Any, Any]"

if TYPE_CHECKING:
    _Interceptor: TypeAlias = aio.ServerInterceptor[Any, Any]
else:  # generic only in the stubs
    _Interceptor = aio.ServerInterceptor

REGISTER = "/dcnr.v1.PNodeService/Register"
#: The calls every agent makes all the time; limited per caller identity.
HOT_METHODS = frozenset(
    {
        "/dcnr.v1.PNodeService/Heartbeat",
        "/dcnr.v1.ResolutionService/Resolve",
        "/dcnr.v1.ResolutionService/BatchResolve",
        "/dcnr.v1.ResolutionService/WatchEndpoints",
        "/dcnr.v1.ValidationService/ReportResult",
    }
)
RATE_LIMITED = "RateLimited"
#: The per-address limit on the hot calls, as a multiple of the per-caller one.
ADDRESS_FACTOR = 10

OnRefused = Callable[[str, str], None]


@dataclasses.dataclass(frozen=True, slots=True)
class Limits:
    """The defaults: an agent registers once per start, so 5/s with bursts of 20 per address
    lets a whole rack behind one NAT restart at once; an agent heartbeats once a second and
    resolves a few peers per step, so 100/s with bursts of 200 per identity is far above
    any honest agent and still bounds one caller to a small share of a replica."""

    register: ratelimit.Limit = dataclasses.field(default_factory=lambda: ratelimit.Limit(5.0, 20))
    hot: ratelimit.Limit = dataclasses.field(default_factory=lambda: ratelimit.Limit(100.0, 200))
    #: Buckets kept per table (three: Register per address, hot calls per caller and per
    #: address): about 200 bytes each, so 10,000 keys cost about 2 MB per table.
    max_keys: int = 10_000


def peer_address(peer: str) -> str:
    """The IP of a grpc peer string: 'ipv4:10.0.0.7:5123' → '10.0.0.7',
    'ipv6:[::1]:5123' → '::1'; anything else (unix sockets) whole."""
    kind, _, rest = peer.partition(":")
    if kind == "ipv4":
        return rest.rpartition(":")[0] or rest
    if kind == "ipv6":
        host = rest.rpartition(":")[0] or rest
        return host.removeprefix("[").removesuffix("]")
    return peer


@functools.lru_cache(maxsize=4096)
def rate_key(address: str) -> str:
    """The key an address is limited by: an IPv4 address itself, an IPv6 address's /64
    (an IPv4-mapped one as its IPv4 address); anything unparsable as is. Cached: a peer
    calls many times, and parsing its address was a few percent of a Resolve's CPU."""
    try:
        ip = ipaddress.ip_address(address.partition("%")[0])
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


def caller_identity(context: aio.ServicerContext[Any, Any]) -> str:
    """A digest of the presented bearer credential, or the source address without one."""
    presented = rpc.bearer(context)
    if presented is not None:
        return "cred:" + hashlib.sha256(presented.encode()).hexdigest()[:32]
    return "addr:" + rate_key(peer_address(context.peer() or ""))


class AdmissionLimits(_Interceptor):
    def __init__(
        self,
        limits: Limits,
        clock: clock_mod.Clock,
        *,
        on_refused: OnRefused | None = None,
    ) -> None:
        self.limits = limits
        self._clock = clock
        self._on_refused = on_refused or (lambda _method, _reason: None)
        self.register_buckets = ratelimit.Buckets(limits.register, max_keys=limits.max_keys)
        self.hot_buckets = ratelimit.Buckets(limits.hot, max_keys=limits.max_keys)
        hot = limits.hot
        self.hot_address_limit = (
            hot
            if hot.unlimited
            else ratelimit.Limit(hot.rate * ADDRESS_FACTOR, hot.burst * ADDRESS_FACTOR)
        )
        self.hot_address_buckets = ratelimit.Buckets(
            self.hot_address_limit, max_keys=limits.max_keys
        )
        self._limited = rpc_timer.Rewrapped(self._wrap)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Handler:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or (method != REGISTER and method not in HOT_METHODS):
            return handler
        if self._unlimited(method):
            return handler  # no limit to apply: no per-call work either
        return self._limited(method, handler)

    def _unlimited(self, method: str) -> bool:
        if method == REGISTER:
            return self.limits.register.unlimited
        return self.limits.hot.unlimited and self.hot_address_limit.unlimited

    def refusal(self, method: str, context: aio.ServicerContext[Any, Any]) -> Exception | None:
        """The RESOURCE_EXHAUSTED to answer, or None when the call may go on."""
        now = self._clock.monotonic()
        address = rate_key(peer_address(context.peer() or ""))
        if method == REGISTER:
            if self.register_buckets.take(address, now):
                return None
            limit, per = self.limits.register, f"source address {address}"
        elif not self.hot_buckets.take(caller_identity(context), now):
            limit, per = self.limits.hot, "caller (credential, or source address without one)"
        elif not self.hot_address_buckets.take(address, now):
            limit, per = self.hot_address_limit, f"source address {address}"
        else:
            return None
        self._on_refused(method, RATE_LIMITED)
        return faults.ResourceExhausted(
            f"{method.rpartition('/')[2]}: rate limit of {limit.describe()} per {per} "
            "exceeded; retry with backoff",
            reason=RATE_LIMITED,
        )

    def _wrap(self, method: str, handler: Handler) -> Handler:
        kw = {
            "request_deserializer": handler.request_deserializer,
            "response_serializer": handler.response_serializer,
        }
        if handler.unary_unary is not None:
            behavior: Callable[[Any, Any], Any] = handler.unary_unary

            async def unary(request: Any, context: aio.ServicerContext[Any, Any]) -> Any:
                refused = self.refusal(method, context)
                if refused is not None:
                    await rpc.abort(context, refused)
                return await behavior(request, context)

            return grpc.unary_unary_rpc_method_handler(unary, **kw)
        if handler.unary_stream is not None:
            streaming: Callable[[Any, Any], Any] = handler.unary_stream

            async def stream(
                request: Any, context: aio.ServicerContext[Any, Any]
            ) -> AsyncIterator[Any]:
                refused = self.refusal(method, context)
                if refused is not None:
                    await rpc.abort(context, refused)
                result = streaming(request, context)
                if hasattr(result, "__aiter__"):
                    async for message in result:
                        yield message
                    return
                await result

            return grpc.unary_stream_rpc_method_handler(stream, **kw)
        return handler
