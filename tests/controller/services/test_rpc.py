"""The one translation table: every error the rooms raise becomes one status code and
reason at the gRPC boundary, and nothing else escapes as anything but INTERNAL."""

from __future__ import annotations

import grpc
import pytest

from api.manifest import errors as manifest_errors
from controller import errors as faults
from controller.services import rpc
from store import errors

#: Each domain error class → the status and default reason clients see.
DOMAIN = {
    faults.InvalidArgument: (grpc.StatusCode.INVALID_ARGUMENT, "FieldInvalid"),
    faults.NotFound: (grpc.StatusCode.NOT_FOUND, "NotFound"),
    faults.FailedPrecondition: (grpc.StatusCode.FAILED_PRECONDITION, "FailedPrecondition"),
    faults.Conflict: (grpc.StatusCode.ABORTED, "Conflict"),
    faults.Unauthenticated: (grpc.StatusCode.UNAUTHENTICATED, "Unauthenticated"),
    faults.PermissionDenied: (grpc.StatusCode.PERMISSION_DENIED, "PermissionDenied"),
    faults.ResourceExhausted: (grpc.StatusCode.RESOURCE_EXHAUSTED, "TooLarge"),
    faults.Unavailable: (grpc.StatusCode.UNAVAILABLE, "Unavailable"),
    faults.DeadlineExceeded: (grpc.StatusCode.DEADLINE_EXCEEDED, "Timeout"),
    faults.DataLoss: (grpc.StatusCode.DATA_LOSS, "Checksum"),
}


def _subclasses(kind: type[faults.ControllerError]) -> set[type[faults.ControllerError]]:
    found = set()
    for sub in kind.__subclasses__():
        found |= {sub, *_subclasses(sub)}
    return found


def test_every_domain_error_class_has_a_case_here() -> None:
    """A new class in controller/errors.py must be added to DOMAIN (and to rpc's table)."""
    direct = set(faults.ControllerError.__subclasses__())
    assert direct == set(DOMAIN)


@pytest.mark.parametrize(("kind", "expected"), DOMAIN.items(), ids=[k.__name__ for k in DOMAIN])
def test_each_domain_error_maps_to_its_code_and_default_reason(kind, expected) -> None:
    code, reason = expected
    assert rpc._status_for(kind("network 'x' not found")) == (code, "network 'x' not found", reason)


@pytest.mark.parametrize(
    "kind", sorted(_subclasses(faults.ControllerError), key=str), ids=lambda k: k.__name__
)
def test_every_domain_error_class_maps_to_a_code_other_than_internal(kind) -> None:
    error = kind("seed", -1, "must be >= 0") if issubclass(kind, faults.FieldInvalid) else kind("x")
    code, _, reason = rpc._status_for(error)
    assert code != grpc.StatusCode.INTERNAL
    assert reason == kind.default_reason


def test_a_raise_site_s_reason_is_carried_to_the_client() -> None:
    stale = faults.FailedPrecondition("attempt: 1 is stale", reason="StaleAttempt")
    assert rpc._status_for(stale) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "attempt: 1 is stale",
        "StaleAttempt",
    )
    checked = faults.DataLoss("tensors['x']: crc mismatch", reason="FieldInvalid")
    assert rpc._status_for(checked)[::2] == (grpc.StatusCode.DATA_LOSS, "FieldInvalid")


def test_field_invalid_names_the_field_what_is_valid_and_the_value() -> None:
    error = faults.FieldInvalid("limit", 5000, "must be between 0 and 1000")
    assert rpc._status_for(error) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "limit: must be between 0 and 1000, got 5000",
        "FieldInvalid",
    )
    assert (error.field, error.value, error.expected) == (
        "limit",
        5000,
        "must be between 0 and 1000",
    )


@pytest.mark.parametrize(
    ("error", "code", "reason"),
    [
        (errors.NotFound("gone"), grpc.StatusCode.NOT_FOUND, "NotFound"),
        (errors.AlreadyExists("there"), grpc.StatusCode.ALREADY_EXISTS, "AlreadyExists"),
        (errors.Conflict("moved"), grpc.StatusCode.ABORTED, "Conflict"),
        (errors.Unavailable("locked"), grpc.StatusCode.UNAVAILABLE, "Unavailable"),
        (errors.InvalidRequest("too many"), grpc.StatusCode.INVALID_ARGUMENT, "FieldInvalid"),
        (
            manifest_errors.ManifestError([manifest_errors.FieldError("spec.vnodes", "empty")]),
            grpc.StatusCode.INVALID_ARGUMENT,
            "FieldInvalid",
        ),
    ],
)
def test_store_and_manifest_errors_share_the_table(error, code, reason) -> None:
    assert rpc._status_for(error) == (code, str(error), reason)


@pytest.mark.parametrize(
    "error", [RuntimeError("boom"), KeyError("k"), faults.ControllerError("no status of its own")]
)
def test_anything_else_is_internal(error) -> None:
    code, message, reason = rpc._status_for(error)
    assert (code, reason) == (grpc.StatusCode.INTERNAL, "Internal")
    assert message == f"internal error: {type(error).__name__}: {error}"
