"""What every gRPC handler shares: header checks, credentials, and error translation.

Every failure becomes a status code here and nowhere else (`_status_for`, applied by
`@handler` and by the interceptors that refuse calls): the controller's domain errors
(`controller.errors`, drawn there with the status each maps to), the store's
(`store.errors`) and the manifest parser's. Handlers raise those too; nothing else in
controller/ names a status code.

A handler never lets an exception escape as UNKNOWN with a traceback: users get one line
naming the field and value, and the log gets the traceback (anything else is INTERNAL).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc
from grpc import aio

from api import messages
from api.dcnr.v1 import common_pb2
from api.manifest import ManifestError
from api.resources import meta
from controller import config
from controller import errors as faults
from store import errors

log = logging.getLogger("dcnr.rpc")

ERROR_DETAILS_KEY = "dcnr-error-details-bin"

Req = TypeVar("Req")
Resp = TypeVar("Resp")


def check_header(header: common_pb2.RequestHeader) -> None:
    # An empty api_version is taken as the current one: a minimal client needn't fill it.
    if header.api_version not in ("", meta.API_VERSION):
        raise faults.FailedPrecondition(
            f"header.api_version: this server serves {meta.API_VERSION!r}, "
            f"got {header.api_version!r}",
            reason="UnsupportedVersion",
        )


def response_header(header: common_pb2.RequestHeader, served_by: str) -> common_pb2.ResponseHeader:
    return common_pb2.ResponseHeader(
        api_version=meta.API_VERSION,
        server_version=config.SERVER_VERSION,
        request_id=header.request_id,
        served_by=served_by,
    )


def bearer(context: aio.ServicerContext[Any, Any]) -> str | None:
    """The credential from `authorization: Bearer <credential>` call metadata, if any."""
    for key, value in context.invocation_metadata() or ():
        if key == "authorization" and isinstance(value, str) and value.startswith("Bearer "):
            return value.removeprefix("Bearer ").strip() or None
    return None


#: The one translation table: the first row whose class the error is an instance of wins.
#: Domain errors carry their own reason (`controller.errors.ControllerError.reason`); the
#: store's and the manifest parser's get the row's.
_STATUS: tuple[tuple[type[Exception], grpc.StatusCode, str], ...] = (
    (faults.InvalidArgument, grpc.StatusCode.INVALID_ARGUMENT, ""),
    (faults.NotFound, grpc.StatusCode.NOT_FOUND, ""),
    (faults.FailedPrecondition, grpc.StatusCode.FAILED_PRECONDITION, ""),
    (faults.Conflict, grpc.StatusCode.ABORTED, ""),
    (faults.Unauthenticated, grpc.StatusCode.UNAUTHENTICATED, ""),
    (faults.PermissionDenied, grpc.StatusCode.PERMISSION_DENIED, ""),
    (faults.ResourceExhausted, grpc.StatusCode.RESOURCE_EXHAUSTED, ""),
    (faults.Unavailable, grpc.StatusCode.UNAVAILABLE, ""),
    (faults.DeadlineExceeded, grpc.StatusCode.DEADLINE_EXCEEDED, ""),
    (faults.DataLoss, grpc.StatusCode.DATA_LOSS, ""),
    (errors.NotFound, grpc.StatusCode.NOT_FOUND, "NotFound"),
    (errors.AlreadyExists, grpc.StatusCode.ALREADY_EXISTS, "AlreadyExists"),
    (errors.Conflict, grpc.StatusCode.ABORTED, "Conflict"),
    (errors.Unavailable, grpc.StatusCode.UNAVAILABLE, "Unavailable"),
    (errors.InvalidRequest, grpc.StatusCode.INVALID_ARGUMENT, "FieldInvalid"),
    (ManifestError, grpc.StatusCode.INVALID_ARGUMENT, "FieldInvalid"),
)


def _status_for(exc: BaseException) -> tuple[grpc.StatusCode, str, str]:
    """(code, one-line message, ErrorDetails.reason) of any exception."""
    for kind, code, reason in _STATUS:
        if isinstance(exc, kind):
            own = exc.reason if isinstance(exc, faults.ControllerError) else ""
            return code, str(exc), own or reason
    return grpc.StatusCode.INTERNAL, f"internal error: {type(exc).__name__}: {exc}", "Internal"


def refusal(exc: BaseException) -> tuple[grpc.StatusCode, str, str]:
    """(code, one bounded line, ErrorDetails.reason) that `exc` is answered with: by `abort`
    for a call, in the answer to one message of a stream (VNodeService.Deliver) otherwise.
    An INTERNAL one is logged with its traceback here."""
    code, message, reason = _status_for(exc)
    if code == grpc.StatusCode.INTERNAL:
        log.exception("rpc failed", exc_info=exc)
    # One bounded line whatever the input was (a 10 KB name must not come back whole).
    return code, messages.clip(message), reason


async def abort(context: aio.ServicerContext[Any, Any], exc: BaseException) -> None:
    code, message, reason = refusal(exc)
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
