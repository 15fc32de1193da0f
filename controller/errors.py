"""Domain errors of the controller: what its rooms raise instead of speaking gRPC.

Every room below services/ raises these (or `store.errors`); `controller.services.rpc`
maps each to a gRPC status code in one table (`_status_for`). Keep the hierarchy small: a
new class is warranted only when a caller must tell it apart, or when it maps to another
status code.

    ControllerError              reason (default)     status
    ├── InvalidArgument          FieldInvalid         INVALID_ARGUMENT
    │   └── FieldInvalid         FieldInvalid         INVALID_ARGUMENT  "field: expected, got value"
    ├── NotFound                 NotFound             NOT_FOUND
    ├── FailedPrecondition       FailedPrecondition   FAILED_PRECONDITION  (StaleEpoch, Fenced, ...)
    ├── Conflict                 Conflict             ABORTED
    ├── Unauthenticated          Unauthenticated      UNAUTHENTICATED
    ├── PermissionDenied         PermissionDenied     PERMISSION_DENIED
    ├── ResourceExhausted        TooLarge             RESOURCE_EXHAUSTED
    ├── Unavailable              Unavailable          UNAVAILABLE  (NotReady: retry later)
    ├── DeadlineExceeded         Timeout              DEADLINE_EXCEEDED
    └── DataLoss                 Checksum             DATA_LOSS

The message is the one line users see: it names the field, the value and what would be
valid. The `reason` is the machine-readable word clients branch on (ErrorDetails.reason):
a raise site passes its own when the class's default is not the word clients expect
(`FailedPrecondition(..., reason="StaleAttempt")`, which agents take as final).
"""

from __future__ import annotations

from typing import ClassVar


class ControllerError(Exception):
    """A request the controller cannot serve, for a reason the caller can act on."""

    default_reason: ClassVar[str] = "Internal"

    def __init__(self, message: str, *, reason: str = "") -> None:
        super().__init__(message)
        self.reason = reason or self.default_reason


class InvalidArgument(ControllerError):
    """The request itself is wrong; retrying it unchanged cannot succeed. The message comes
    from the parser that refused it (a tensor, a result check) and names the field."""

    default_reason = "FieldInvalid"


class FieldInvalid(InvalidArgument):
    """One field's value is not valid: the message names the field, what would be valid and
    the value given."""

    def __init__(self, field: str, value: object, expected: str, *, reason: str = "") -> None:
        super().__init__(f"{field}: {expected}, got {value!r}", reason=reason)
        self.field = field
        self.value = value
        self.expected = expected


class NotFound(ControllerError):
    default_reason = "NotFound"


class FailedPrecondition(ControllerError):
    """The request is well formed but the state it assumes is gone: a stale epoch or
    attempt, a fenced incarnation, a network being deleted, a job already finished."""

    default_reason = "FailedPrecondition"


class Conflict(ControllerError):
    """The record is not at the version the request was conditioned on, or kept changing
    under every attempt to write it: re-read and try again."""

    default_reason = "Conflict"


class Unauthenticated(ControllerError):
    default_reason = "Unauthenticated"


class PermissionDenied(ControllerError):
    default_reason = "PermissionDenied"


class ResourceExhausted(ControllerError):
    default_reason = "TooLarge"


class Unavailable(ControllerError):
    """Not now: the network is not ready, a VNode could not be reached or restored."""

    default_reason = "Unavailable"


class DeadlineExceeded(ControllerError):
    default_reason = "Timeout"


class DataLoss(ControllerError):
    """Bytes were corrupted in transit (a checksum mismatch); sending again may succeed."""

    default_reason = "Checksum"
