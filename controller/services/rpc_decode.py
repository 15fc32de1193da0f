"""Requests that are not valid protobuf are refused as INVALID_ARGUMENT, like any bad field.

grpc.aio decodes a request with the handler's `request_deserializer` before any handler
(or interceptor's behaviour) runs, outside every `try` of ours: a deserializer that raises
makes grpc.aio log an ERROR with a traceback ("Unexpected [DecodeError] raised by servicer
method") and answer UNKNOWN, and the call is never timed. So garbage from anyone would
flood the log and break the promise of `controller.services.rpc` (never UNKNOWN).

The deserializer cannot abort the call (it has no context), so `DecodeGuard` makes it
*return* the failure, as an `Undecodable`, and makes the behaviour refuse an `Undecodable`
through `rpc.abort` like every other client error: one line naming the message type, no
traceback, and the status code recorded by `rpc_timer.RpcTimer` (listed before this
interceptor, it times the behaviour this one wraps).

Only request-unary shapes are guarded: every dcnr.v1 method takes one request. The
reflection service's request stream is grpc_reflection's own code.

Size before parsing: the methods in `MAX_REQUEST_BYTES` refuse a request larger than their
cap from its raw length, before protobuf decodes a byte of it, as RESOURCE_EXHAUSTED with
reason `RequestTooLarge` naming the method and the cap. So a 3 MB heartbeat carrying
100,000 statuses costs a length comparison, not a parse (issue 11). The caps are the
"Limits" table of docs/security.md; other methods are bounded by the listener's gRPC
maximum receive size only.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeAlias

import grpc
from grpc import aio

from controller import errors as faults
from controller.services import rpc, rpc_timer

Handler: TypeAlias = "grpc.RpcMethodHandler[Any, Any]"  # generic only in the stubs

if TYPE_CHECKING:
    _Interceptor: TypeAlias = aio.ServerInterceptor[Any, Any]
else:  # generic only in the stubs
    _Interceptor = aio.ServerInterceptor


#: Largest request, in serialized bytes, each method accepts (docs/security.md, "Limits").
#: Each is far above what the method's own field caps allow an honest caller to send.
#: The text names the fields whose caps make the bound (said in the refusal).
MAX_REQUEST_BYTES: dict[str, tuple[int, str]] = {
    "/dcnr.v1.PNodeService/Register": (128 * 1024, "labels <= 64, datasets <= 256"),
    "/dcnr.v1.PNodeService/Heartbeat": (
        256 * 1024,
        "assignment_statuses <= the PNode's assignments + 8",
    ),
    "/dcnr.v1.PNodeService/WatchAssignments": (4 * 1024, "no repeated fields"),
    "/dcnr.v1.PNodeService/Deregister": (4 * 1024, "reason <= 1024 characters"),
    "/dcnr.v1.ResolutionService/Resolve": (4 * 1024, "no repeated fields"),
    "/dcnr.v1.ResolutionService/BatchResolve": (2 * 1024 * 1024, "vnodes <= 10000"),
    "/dcnr.v1.ResolutionService/WatchEndpoints": (1024 * 1024, "vnodes <= 10000"),
    "/dcnr.v1.ValidationService/ReportResult": (64 * 1024, "checks <= 64"),
}


@dataclasses.dataclass(frozen=True, slots=True)
class Undecodable:
    """What a guarded deserializer returns instead of raising: why the bytes are no request."""

    problem: str
    #: Refused for its size, unparsed: RESOURCE_EXHAUSTED rather than INVALID_ARGUMENT.
    too_large: bool = False


def guarded_deserializer(
    deserialize: Callable[[bytes], Any],
    type_name: str,
    *,
    max_bytes: int | None = None,
    fields: str = "",
) -> Callable[[bytes], Any]:
    """`deserialize`, returning an `Undecodable` instead of raising (DecodeError, or anything
    else a decoder may raise on hostile bytes: nesting past protobuf's recursion limit,
    invalid UTF-8 in a string field), or without decoding when `raw` exceeds `max_bytes`."""

    def decode(raw: bytes) -> Any:
        if max_bytes is not None and len(raw) > max_bytes:
            return Undecodable(
                f"request of {len(raw)} bytes exceeds the limit of {max_bytes} bytes for a "
                f"{type_name} ({fields}); nothing of it was read",
                too_large=True,
            )
        try:
            return deserialize(raw)
        except Exception as exc:
            return Undecodable(
                f"request is not a valid {type_name} ({len(raw)} bytes): "
                f"{type(exc).__name__}: {exc}"
            )

    return decode


def refusal(request: Undecodable) -> faults.ControllerError:
    if request.too_large:
        return faults.ResourceExhausted(request.problem, reason="RequestTooLarge")
    return faults.InvalidArgument(request.problem, reason="Undecodable")


class DecodeGuard(_Interceptor):
    """Rewraps every request-unary handler so an undecodable request becomes
    INVALID_ARGUMENT with reason `Undecodable`."""

    def __init__(self, *, on_refused: Callable[[str, str], None] | None = None) -> None:
        """`on_refused(method, reason)` counts requests refused for their size."""
        self._on_refused = on_refused or (lambda _method, _reason: None)
        self._guarded = rpc_timer.Rewrapped(self._wrap)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Handler:
        handler = await continuation(handler_call_details)
        if handler is None or handler.request_deserializer is None:
            return handler
        return self._guarded(handler_call_details.method, handler)

    def _wrap(self, method: str, handler: Handler) -> Handler:
        assert handler.request_deserializer is not None
        type_name = _request_type(handler.request_deserializer, method)
        max_bytes, fields = MAX_REQUEST_BYTES.get(method, (None, ""))
        decode = guarded_deserializer(
            handler.request_deserializer, type_name, max_bytes=max_bytes, fields=fields
        )
        def count(request: Undecodable) -> None:
            if request.too_large:
                self._on_refused(method, "RequestTooLarge")

        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                _refusing_unary(handler.unary_unary, count),
                request_deserializer=decode,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                _refusing_stream(handler.unary_stream, count),
                request_deserializer=decode,
                response_serializer=handler.response_serializer,
            )
        # Request streams: VNodeService.Deliver only, whose handler parses each message
        # itself (`driver_inbox_service`), each under the listener's gRPC receive limit.
        return handler


def _request_type(deserializer: Callable[[bytes], Any], method: str) -> str:
    """`dcnr.v1.ApplyRequest` from a generated `ApplyRequest.FromString`, for the message."""
    owner = getattr(deserializer, "__self__", None)
    descriptor = getattr(owner, "DESCRIPTOR", None)
    full_name = getattr(descriptor, "full_name", None)
    return full_name if isinstance(full_name, str) else f"request of {method}"


def _refusing_unary(
    behavior: Callable[[Any, Any], Any], count: Callable[[Undecodable], None]
) -> Callable[[Any, Any], Any]:
    async def unary(request: Any, context: Any) -> Any:
        if isinstance(request, Undecodable):
            count(request)
            await rpc.abort(context, refusal(request))
        return await behavior(request, context)

    return unary


def _refusing_stream(
    behavior: Callable[[Any, Any], Any], count: Callable[[Undecodable], None]
) -> Callable[[Any, Any], AsyncIterator[Any]]:
    async def stream(request: Any, context: Any) -> AsyncIterator[Any]:
        if isinstance(request, Undecodable):
            count(request)
            await rpc.abort(context, refusal(request))
        result = behavior(request, context)
        if hasattr(result, "__aiter__"):
            async for message in result:
                yield message
            return
        # A handler may also write through the context and return an awaitable.
        await result

    return stream
