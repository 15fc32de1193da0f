"""What every gRPC handler shares: header checks, credentials, and error translation.

Translation table (our errors → gRPC status), applied by `@handler`:

    store NotFound        NOT_FOUND            store AlreadyExists   ALREADY_EXISTS
    store Conflict        ABORTED              store Unavailable     UNAVAILABLE
    store InvalidRequest  INVALID_ARGUMENT     ManifestError         INVALID_ARGUMENT
    RpcFailure(code, ..)  code                 anything else         INTERNAL (logged)

A handler never lets an exception escape as UNKNOWN with a traceback: users get one line
naming the field and value, and the log gets the traceback.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc
from grpc import aio

from api.dcnr.v1 import common_pb2
from api.manifest import ManifestError
from api.resources import meta
from store import errors

log = logging.getLogger("dcnr.rpc")

SERVER_VERSION = "0.1.0"
ERROR_DETAILS_KEY = "dcnr-error-details-bin"

Req = TypeVar("Req")
Resp = TypeVar("Resp")


class RpcFailure(Exception):
    """Raise from a handler to answer with `code` and a one-line message."""

    def __init__(self, code: grpc.StatusCode, message: str, *, reason: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason


def invalid(field: str, value: object, expected: str) -> RpcFailure:
    return RpcFailure(
        grpc.StatusCode.INVALID_ARGUMENT,
        f"{field}: {expected}, got {value!r}",
        reason="FieldInvalid",
    )


def check_header(header: common_pb2.RequestHeader) -> None:
    # An empty api_version is taken as the current one: a minimal client needn't fill it.
    if header.api_version not in ("", meta.API_VERSION):
        raise RpcFailure(
            grpc.StatusCode.FAILED_PRECONDITION,
            f"header.api_version: this server serves {meta.API_VERSION!r}, "
            f"got {header.api_version!r}",
            reason="UnsupportedVersion",
        )


def response_header(header: common_pb2.RequestHeader, served_by: str) -> common_pb2.ResponseHeader:
    return common_pb2.ResponseHeader(
        api_version=meta.API_VERSION,
        server_version=SERVER_VERSION,
        request_id=header.request_id,
        served_by=served_by,
    )


def bearer(context: aio.ServicerContext[Any, Any]) -> str | None:
    """The credential from `authorization: Bearer <credential>` call metadata, if any."""
    for key, value in context.invocation_metadata() or ():
        if key == "authorization" and isinstance(value, str) and value.startswith("Bearer "):
            return value.removeprefix("Bearer ").strip() or None
    return None


def _status_for(exc: BaseException) -> tuple[grpc.StatusCode, str, str]:
    if isinstance(exc, RpcFailure):
        return exc.code, str(exc), exc.reason
    if isinstance(exc, ManifestError):
        return grpc.StatusCode.INVALID_ARGUMENT, str(exc), "FieldInvalid"
    table: list[tuple[type[errors.StoreError], grpc.StatusCode, str]] = [
        (errors.NotFound, grpc.StatusCode.NOT_FOUND, "NotFound"),
        (errors.AlreadyExists, grpc.StatusCode.ALREADY_EXISTS, "AlreadyExists"),
        (errors.Conflict, grpc.StatusCode.ABORTED, "Conflict"),
        (errors.Unavailable, grpc.StatusCode.UNAVAILABLE, "Unavailable"),
        (errors.InvalidRequest, grpc.StatusCode.INVALID_ARGUMENT, "FieldInvalid"),
    ]
    for kind, code, reason in table:
        if isinstance(exc, kind):
            return code, str(exc), reason
    return grpc.StatusCode.INTERNAL, f"internal error: {type(exc).__name__}: {exc}", "Internal"


async def abort(context: aio.ServicerContext[Any, Any], exc: BaseException) -> None:
    code, message, reason = _status_for(exc)
    if code == grpc.StatusCode.INTERNAL:
        log.exception("rpc failed", exc_info=exc)
    details = common_pb2.ErrorDetails(reason=reason).SerializeToString()
    context.set_trailing_metadata(((ERROR_DETAILS_KEY, details),))
    await context.abort(code, message)


def handler(
    method: Callable[[Any, Req, aio.ServicerContext[Req, Resp]], Awaitable[Resp]],
) -> Callable[[Any, Req, aio.ServicerContext[Req, Resp]], Awaitable[Resp]]:
    """Wrap a unary handler: check the request header, translate every failure."""

    @functools.wraps(method)
    async def wrapped(self: Any, request: Req, context: aio.ServicerContext[Req, Resp]) -> Resp:
        try:
            header = getattr(request, "header", None)
            if header is not None:
                check_header(header)
            return await method(self, request, context)
        except aio.AbortError:
            raise
        except Exception as exc:  # translated, never UNKNOWN
            await abort(context, exc)
            raise AssertionError("unreachable: abort raises") from exc

    return wrapped
