"""What a user sees when something fails: one kubectl-style line and exit code 1.

    gRPC status from the server            Error from server (<Reason>): <message>
    UNAVAILABLE / DEADLINE_EXCEEDED with   error: unable to connect to the server at
      no dcnr error details (the network)    HOST:PORT: <what grpc said>
    ... because the two ends disagree      error: unable to connect to the server at
      about TLS, or its certificate is       HOST:PORT: <what to fix> (<what grpc said>)
      not trusted
    local problems (flags, files)          error: <message>

The server attaches `dcnr-error-details-bin` trailing metadata to every status it raises
itself, which is how a refused connection (no details) is told apart from a server that
answered UNAVAILABLE on purpose (e.g. "network not ready").
"""

from __future__ import annotations

import grpc

from api import messages
from api import tls as api_tls

ERROR_DETAILS_KEY = "dcnr-error-details-bin"

#: kubectl's reason for each gRPC code.
REASONS: dict[grpc.StatusCode, str] = {
    grpc.StatusCode.NOT_FOUND: "NotFound",
    grpc.StatusCode.INVALID_ARGUMENT: "Invalid",
    grpc.StatusCode.ALREADY_EXISTS: "AlreadyExists",
    grpc.StatusCode.ABORTED: "Conflict",
    grpc.StatusCode.UNAUTHENTICATED: "Unauthorized",
    grpc.StatusCode.PERMISSION_DENIED: "Forbidden",
    grpc.StatusCode.FAILED_PRECONDITION: "BadRequest",
    grpc.StatusCode.UNAVAILABLE: "ServiceUnavailable",
    grpc.StatusCode.INTERNAL: "InternalError",
    grpc.StatusCode.DEADLINE_EXCEEDED: "Timeout",
    grpc.StatusCode.RESOURCE_EXHAUSTED: "TooManyRequests",
    grpc.StatusCode.UNIMPLEMENTED: "MethodNotAllowed",
    grpc.StatusCode.DATA_LOSS: "InternalError",
    grpc.StatusCode.OUT_OF_RANGE: "Invalid",
    grpc.StatusCode.CANCELLED: "Cancelled",
}


class CliError(Exception):
    """Ends the command with `str(self)` on stderr and exit code 1."""


class ServerError(CliError):
    """The server answered with an error status."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        self.code = code
        self.reason = REASONS.get(code, "Unknown")
        super().__init__(f"Error from server ({self.reason}): {message}")


class Unreachable(CliError):
    def __init__(self, server: str, detail: str) -> None:
        self.server = server
        super().__init__(f"error: unable to connect to the server at {server}: {detail}")


def local(message: str) -> CliError:
    return CliError(f"error: {message}")


def from_rpc(
    exc: grpc.RpcError, server: str, *, tls: bool | None = None, ca_given: bool = True
) -> CliError:
    """The CliError for a failed call; `server` is the address the call went to, `tls`
    whether the call went over TLS (None: unknown, no hint), `ca_given` whether it trusted
    the context's tls-ca rather than gRPC's default roots."""
    code: grpc.StatusCode = exc.code() if isinstance(exc, grpc.Call) else grpc.StatusCode.UNKNOWN
    raw = (exc.details() if isinstance(exc, grpc.Call) else None) or str(code.name).lower()
    detail = messages.clip(raw)  # one bounded line, whatever the server put in it
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED) and not (
        _from_server(exc)
    ):
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            detail = f"no answer before the deadline ({detail})"
        hint = (
            api_tls.describe_failure(code, raw, tls=tls, ca_given=ca_given)
            if tls is not None
            else None
        )
        return Unreachable(server, f"{hint} ({detail})" if hint else detail)
    return ServerError(code, detail)


def _from_server(exc: grpc.RpcError) -> bool:
    if not isinstance(exc, grpc.Call):
        return False
    trailing = exc.trailing_metadata() or ()
    return any(key == ERROR_DETAILS_KEY for key, _ in trailing)


def is_not_found(exc: grpc.RpcError) -> bool:
    return isinstance(exc, grpc.Call) and exc.code() == grpc.StatusCode.NOT_FOUND
