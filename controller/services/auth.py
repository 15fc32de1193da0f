"""Who may call what: the one table of methods and the access each needs, the admin and
read-only tokens, and the gate in front of ResolutionService.

`METHODS` has a row for every dcnr.v1 method (a test derives the list from the service
descriptors and fails when one is missing):

    ADMIN    admin token: calls that change state or cost compute (Apply, Delete*, Train,
             Infer, CancelJob, DeleteJob, Cordon, Uncordon, Drain)
    READ     admin or read-only token: Get*, List*, Watch*, ExplainPlacement, ListEvents
    RESOLVE  admin or read-only token, or the credential of a PNode hosting a VNode of the
             network asked about: checked by `ResolveGate`, inside ResolutionService, since
             a PNode's right depends on the network in the request
    PNODE    the PNode's own credential, checked by the service itself (Register, Heartbeat,
             WatchAssignments, Deregister, ReportResult) or by the data plane (VNodeService)

Methods outside dcnr.v1 (health, reflection) are open; a dcnr.v1 method missing from the
table needs the admin role (fail closed).

With no token configured nothing here is checked: a server without --admin-token-file is
an open local cluster, where anyone may also Apply or Delete, so guarding Resolve alone
would protect nothing. A missing token is UNAUTHENTICATED, a wrong one PERMISSION_DENIED,
a read-only token on an ADMIN method PERMISSION_DENIED naming the role and the method.
Tokens are compared in constant time, against every configured token, so the answer's
timing says nothing about which token came close. Every refusal is counted
(`dcnr_rpc_refused_total{method, reason}`).
"""

from __future__ import annotations

import enum
import hmac
import pathlib
from collections.abc import Awaitable, Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any, Literal, TypeAlias

import grpc
from grpc import aio

from controller import errors as faults
from controller.services import rpc
from controller.state import identities as identities_mod
from controller.state import view as view_mod


class Access(enum.Enum):
    ADMIN = "admin"
    READ = "read"
    RESOLVE = "resolve"
    PNODE = "pnode"


def _rows(service: str, access: Access, *methods: str) -> dict[str, Access]:
    return {f"/dcnr.v1.{service}/{m}": access for m in methods}


#: The one table: every dcnr.v1 method and the access it needs.
METHODS: dict[str, Access] = {
    **_rows("NetworkService", Access.ADMIN, "Apply", "DeleteNetwork"),
    **_rows(
        "NetworkService",
        Access.READ,
        "GetNetwork",
        "ListNetworks",
        "WatchNetworks",
        "ListAllocations",
        "ExplainPlacement",
        "ListEvents",
    ),
    **_rows("JobService", Access.ADMIN, "Train", "Infer", "CancelJob", "DeleteJob"),
    **_rows("JobService", Access.READ, "GetJob", "ListJobs", "WatchJob"),
    **_rows("PNodeService", Access.ADMIN, "Cordon", "Uncordon", "Drain"),
    **_rows("PNodeService", Access.READ, "GetPNode", "ListPNodes"),
    **_rows(
        "PNodeService", Access.PNODE, "Register", "Heartbeat", "WatchAssignments", "Deregister"
    ),
    **_rows("ResolutionService", Access.RESOLVE, "Resolve", "BatchResolve", "WatchEndpoints"),
    **_rows("ValidationService", Access.PNODE, "ReportResult"),
    **_rows(
        "VNodeService",
        Access.PNODE,
        "Forward",
        "Backward",
        "Checkpoint",
        "Restore",
        "DescribeData",
        "Deliver",
    ),
}

Role = Literal["admin", "read-only"]
#: Called with (full method name, reason) for every refused call (`Metrics.refused`).
OnRefused = Callable[[str, str], None]

Handler: TypeAlias = "grpc.RpcMethodHandler[Any, Any]"

if TYPE_CHECKING:
    _Interceptor: TypeAlias = aio.ServerInterceptor[Any, Any]
else:  # generic only in the stubs
    _Interceptor = aio.ServerInterceptor


def access(method: str) -> Access | None:
    """What `method` needs; None for methods outside dcnr.v1 (health, reflection: open)."""
    if not method.startswith("/dcnr.v1."):
        return None
    return METHODS.get(method, Access.ADMIN)


#: The reasons each kind of method is refused for, here or by the service that checks it.
_REASONS: dict[Access, tuple[str, ...]] = {
    Access.ADMIN: ("Unauthenticated", "Forbidden", "ReadOnly"),
    Access.READ: ("Unauthenticated", "Forbidden"),
    Access.RESOLVE: ("Unauthenticated", "NotHosting"),
}
_PNODE_REASONS: dict[str, tuple[str, ...]] = {
    "/dcnr.v1.PNodeService/Register": ("NameTaken",),
    "/dcnr.v1.PNodeService/Heartbeat": ("Unauthenticated",),
    "/dcnr.v1.PNodeService/WatchAssignments": ("Unauthenticated",),
    "/dcnr.v1.PNodeService/Deregister": ("Unauthenticated",),
    "/dcnr.v1.ValidationService/ReportResult": ("Unauthenticated",),
}


def known_refusals() -> Iterator[tuple[str, str]]:
    """Every (method, reason) `dcnr_rpc_refused_total` is counted with by this module and
    the PNode services, exported at 0 from the start so an alert sees the series."""
    for method, needs in METHODS.items():
        for reason in _REASONS.get(needs, ()) + _PNODE_REASONS.get(method, ()):
            yield method, reason


def guarded(method: str) -> bool:
    """Whether the interceptor itself checks a token for `method`."""
    return access(method) in (Access.ADMIN, Access.READ)


def load_tokens(path: str | pathlib.Path, flag: str = "--admin-token-file") -> set[str]:
    """One token per line; blank lines and `#` comments are skipped. A file with no token
    is an error: an operator who passed the flag meant to require one."""
    lines = pathlib.Path(path).read_text().splitlines()
    tokens = {line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")}
    if not tokens:
        raise ValueError(f"{flag} {path}: holds no token (one per line)")
    bad = [t for t in tokens if any(ch.isspace() for ch in t)]
    if bad:
        raise ValueError(f"{flag} {path}: a token must not contain whitespace")
    return tokens


class Tokens:
    """The configured admin and read-only tokens."""

    def __init__(self, admin: Iterable[str] = (), read_only: Iterable[str] = ()) -> None:
        admin_set = {t for t in admin if t}
        read_set = {t for t in read_only if t}
        if admin_set & read_set:
            raise ValueError("a token is both an admin and a read-only token; give it one role")
        if read_set and not admin_set:
            raise ValueError(
                "read-only tokens need admin tokens too: without them the management API is "
                "open and a read-only role would mean nothing"
            )
        self._roles: list[tuple[bytes, Role]] = [(t.encode(), "admin") for t in sorted(admin_set)]
        self._roles += [(t.encode(), "read-only") for t in sorted(read_set)]

    @property
    def configured(self) -> bool:
        return bool(self._roles)

    def role(self, presented: str | None) -> Role | None:
        if not presented:
            return None
        given = presented.encode()
        found: Role | None = None
        for token, role in self._roles:  # no early exit: every token costs the same
            if hmac.compare_digest(given, token):
                found = role
        return found


def _needs_token() -> faults.Unauthenticated:
    return faults.Unauthenticated("this call needs an admin token: authorization: Bearer <token>")


def _not_valid() -> faults.PermissionDenied:
    return faults.PermissionDenied(
        "the admin token presented is not valid for this server", reason="Forbidden"
    )


class AdminTokenInterceptor(_Interceptor):
    """Checks ADMIN and READ methods against the tokens; leaves the rest to the services."""

    def __init__(
        self, tokens: Iterable[str] | Tokens, *, on_refused: OnRefused | None = None
    ) -> None:
        self._tokens = tokens if isinstance(tokens, Tokens) else Tokens(tokens)
        self._on_refused = on_refused

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Handler:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or not self._tokens.configured:
            return handler
        needs = access(method)
        if needs not in (Access.ADMIN, Access.READ):
            return handler
        presented = _bearer(handler_call_details.invocation_metadata or ())
        role = self._tokens.role(presented)
        refusal: faults.ControllerError
        if role == "admin" or (role == "read-only" and needs is Access.READ):
            return handler
        if presented is None:
            refusal, why = _needs_token(), "Unauthenticated"
        elif role == "read-only":
            refusal = faults.PermissionDenied(
                f"role read-only may not call {method}: it changes state and needs the admin role",
                reason="Forbidden",
            )
            why = "ReadOnly"
        else:
            refusal, why = _not_valid(), "Forbidden"
        if self._on_refused is not None:
            self._on_refused(method, why)
        return _refusing(handler, refusal)


class ResolveGate:
    """Who may resolve a network's VNodes: an admin or read-only token, or a PNode that
    hosts a VNode of that network (any replica of any of its VNodes: a PNode needs its
    neighbours' endpoints, and the network's topology is in every assignment it is sent).

    Resolve is a hot path: the PNode is found from its credential through
    `controller.state.identities` (verified credentials are cached, no store read, no hash
    once verified), the hosting check is one index lookup in the view. The check runs
    before any name is looked up, so an unentitled caller learns the same whether or not
    the network or VNode exists.
    """

    def __init__(
        self,
        *,
        tokens: Tokens,
        identities: identities_mod.Identities,
        view: view_mod.View,
        on_refused: OnRefused | None = None,
    ) -> None:
        self._tokens = tokens
        self._identities = identities
        self._view = view
        self._on_refused = on_refused

    def check(self, method: str, presented: str | None, networks: Iterable[str]) -> None:
        """Raise Unauthenticated (no or unknown credential) or PermissionDenied (a PNode
        hosting nothing of one of `networks`)."""
        pnode_name = self._identities.pnode(presented)
        if pnode_name is None:
            if self._tokens.role(presented) is not None:
                return
            self._refused(method, "Unauthenticated")
            raise faults.Unauthenticated(
                "resolving needs the credential of a PNode hosting a VNode of the network, "
                "or an admin or read-only token: authorization: Bearer <credential>"
            )
        for network in networks:
            if not self._view.hosts(pnode_name, network):
                self._refused(method, "NotHosting")
                raise faults.PermissionDenied(
                    f"pnode {pnode_name!r} hosts no VNode of network {network!r}; a PNode may "
                    "resolve only the networks it hosts part of",
                    reason="Forbidden",
                )

    def _refused(self, method: str, reason: str) -> None:
        if self._on_refused is not None:
            self._on_refused(method, reason)


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
