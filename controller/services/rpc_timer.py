"""Every call this server answers, timed into `controller.metrics` by method and status.

The gRPC half of the `dcnr_rpc_duration_seconds` metric: `Metrics` keeps the histogram and
knows nothing of gRPC; this interceptor reads the status a call ended with.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeAlias

import grpc
from grpc import aio

from controller import metrics as metrics_mod

log = logging.getLogger("dcnr.metrics")

Handler: TypeAlias = "grpc.RpcMethodHandler[Any, Any]"  # generic only in the stubs


if TYPE_CHECKING:
    _Interceptor: TypeAlias = aio.ServerInterceptor[Any, Any]
else:  # generic only in the stubs
    _Interceptor = aio.ServerInterceptor


class Rewrapped:
    """The wrapped handler of each method, built once: an interceptor that rewraps a
    handler on every call would build closures and a handler per heartbeat and resolution.
    Keyed by method and kept only while the inner handler is the same object, so it holds at
    most one entry per served method (unknown methods have no handler and are not kept)."""

    def __init__(self, wrap: Callable[[str, Handler], Handler]) -> None:
        self._wrap = wrap
        self._made: dict[str, tuple[Handler, Handler]] = {}

    def __call__(self, method: str, handler: Handler) -> Handler:
        made = self._made.get(method)
        if made is not None and made[0] is handler:
            return made[1]
        wrapped = self._wrap(method, handler)
        self._made[method] = (handler, wrapped)
        return wrapped


class RpcTimer(_Interceptor):
    """Times each call and labels it with the status it ended with.

    How a grpc.aio handler ends: returning (OK unless it set another code on the context),
    `context.abort` (raises AbortError; the code is on the context), any other exception
    (the server answers UNKNOWN), or cancellation (the client went away).
    """

    def __init__(self, metrics: metrics_mod.Metrics) -> None:
        self._metrics = metrics
        self._timed = Rewrapped(self._wrap)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Handler:
        handler = await continuation(handler_call_details)
        if handler is None:  # an unknown method: grpc answers UNIMPLEMENTED itself
            return handler
        return self._timed(handler_call_details.method, handler)

    def _wrap(self, method: str, handler: Handler) -> Handler:
        record = self._recorder(method)
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                _timed_unary(handler.unary_unary, record),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None and inspect.isasyncgenfunction(handler.unary_stream):
            return grpc.unary_stream_rpc_method_handler(
                _timed_stream(handler.unary_stream, record),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return handler  # client-streaming shapes: none in dcnr.v1 that we time

    def _recorder(self, method: str) -> Callable[[float, str], None]:
        def record(seconds: float, code: str) -> None:
            try:
                self._metrics.rpc_finished(method, code, seconds)
            except Exception:
                log.exception("recording rpc latency failed")

        return record


def _code(context: Any, failure: BaseException | None) -> str:
    code = context.code()
    if isinstance(code, grpc.StatusCode):
        return code.name  # set by abort() or set_code()
    if failure is None:
        return "OK"
    if isinstance(failure, asyncio.CancelledError | GeneratorExit):
        return "CANCELLED"
    return "UNKNOWN"


def _timed_unary(
    behavior: Callable[[Any, Any], Any], record: Callable[[float, str], None]
) -> Callable[[Any, Any], Any]:
    async def timed(request: Any, context: Any) -> Any:
        started = time.perf_counter()
        failure: BaseException | None = None
        try:
            return await behavior(request, context)
        except BaseException as exc:
            failure = exc
            raise
        finally:
            record(time.perf_counter() - started, _code(context, failure))

    return timed


def _timed_stream(
    behavior: Callable[[Any, Any], AsyncIterator[Any]], record: Callable[[float, str], None]
) -> Callable[[Any, Any], AsyncIterator[Any]]:
    async def timed(request: Any, context: Any) -> AsyncIterator[Any]:
        started = time.perf_counter()
        failure: BaseException | None = None
        try:
            async for message in behavior(request, context):
                yield message
        except BaseException as exc:
            failure = exc
            raise
        finally:
            record(time.perf_counter() - started, _code(context, failure))

    return timed
