"""Admin credentials: bearer tokens required on the management API when configured.

Which calls are guarded, and why the others are not:

    NetworkService, JobService                       admin token (users' desired state, runs)
    PNodeService Cordon/Uncordon/Drain/GetPNode/     admin token (operators' calls)
      ListPNodes
    PNodeService Register/Heartbeat/                 untouched: agents present their PNode
      WatchAssignments/Deregister                      credential, checked by the service
    ValidationService, VNodeService                  untouched: PNode credentials and epochs
    ResolutionService                                open for now: agents resolve peers with
                                                       their PNode credential, which this
                                                       interceptor does not know
    health, reflection                               open (probes, tooling)

With no tokens configured nothing is checked (the default for a local cluster). A missing
token is UNAUTHENTICATED, a wrong one PERMISSION_DENIED. Tokens are compared in constant
time, against every configured token, so the answer's timing says nothing about which
token came close.
"""

from __future__ import annotations

import hmac
import pathlib
from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Any, TypeAlias

import grpc
from grpc import aio

from controller import errors as faults
from controller.services import rpc

GUARDED_SERVICES = ("/dcnr.v1.NetworkService/", "/dcnr.v1.JobService/")
GUARDED_METHODS = frozenset(
    f"/dcnr.v1.PNodeService/{m}" for m in ("Cordon", "Uncordon", "Drain", "GetPNode", "ListPNodes")
)

Handler: TypeAlias = "grpc.RpcMethodHandler[Any, Any]"

if TYPE_CHECKING:
    _Interceptor: TypeAlias = aio.ServerInterceptor[Any, Any]
else:  # generic only in the stubs
    _Interceptor = aio.ServerInterceptor


def guarded(method: str) -> bool:
    return method.startswith(GUARDED_SERVICES) or method in GUARDED_METHODS


def load_tokens(path: str | pathlib.Path) -> set[str]:
    """One token per line; blank lines and `#` comments are skipped. A file with no token
    is an error: an operator who passed --admin-token-file meant to require one."""
    lines = pathlib.Path(path).read_text().splitlines()
    tokens = {line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")}
    if not tokens:
        raise ValueError(f"--admin-token-file {path}: holds no token (one per line)")
    bad = [t for t in tokens if any(ch.isspace() for ch in t)]
    if bad:
        raise ValueError(f"--admin-token-file {path}: a token must not contain whitespace")
    return tokens


class AdminTokenInterceptor(_Interceptor):
    def __init__(self, tokens: Iterable[str]) -> None:
        self._tokens = [t.encode() for t in tokens if t]

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Handler:
        handler = await continuation(handler_call_details)
        if handler is None or not self._tokens or not guarded(handler_call_details.method):
            return handler
        presented = _bearer(handler_call_details.invocation_metadata or ())
        refusal: faults.ControllerError
        if presented is None:
            refusal = faults.Unauthenticated(
                "this call needs an admin token: authorization: Bearer <token>"
            )
        elif self._matches(presented):
            return handler
        else:
            refusal = faults.PermissionDenied(
                "the admin token presented is not valid for this server", reason="Forbidden"
            )
        return _refusing(handler, refusal)

    def _matches(self, presented: str) -> bool:
        given = presented.encode()
        found = False
        for token in self._tokens:  # no early exit: every token costs the same
            found |= hmac.compare_digest(given, token)
        return found


def _bearer(metadata: Iterable[tuple[str, str | bytes]]) -> str | None:
    for key, value in metadata:
        if key == "authorization" and isinstance(value, str) and value.startswith("Bearer "):
            return value.removeprefix("Bearer ").strip() or None
    return None


def _refusing(handler: Handler, refusal: faults.ControllerError) -> Handler:
    """A handler of the same shape as `handler` that answers `refusal` without running it."""

    async def refuse(context: aio.ServicerContext[Any, Any]) -> None:
        await rpc.abort(context, refusal)

    async def unary(request: Any, context: aio.ServicerContext[Any, Any]) -> Any:
        await refuse(context)

    async def stream(request: Any, context: aio.ServicerContext[Any, Any]) -> Any:
        await refuse(context)
        yield  # pragma: no cover - abort raises; this makes it an async generator

    kw = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(stream, **kw)
    return grpc.unary_unary_rpc_method_handler(unary, **kw)
