"""What a call to any store must satisfy, checked the same way by every backend.

Backends differ in how they keep records, not in which calls are valid, what a continue
token looks like, which metadata a write assigns, or what a failed precondition says. Those
live here, once, so the two backends cannot drift apart in what users see. Pure: no I/O.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any, TypeVar

from api.resources import meta
from store import base, errors

R = TypeVar("R", bound=meta.Resource)

MAX_PAGE_SIZE = 1000


# -- argument checks ----------------------------------------------------------------------


def check_list_args(kind: type[meta.Resource], index: tuple[str, str] | None, limit: int) -> None:
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_PAGE_SIZE:
        raise errors.InvalidRequest(
            f"list {kind.KIND}: limit {limit!r} is out of range; must be 1..{MAX_PAGE_SIZE}",
            kind=kind.KIND,
        )
    if index is not None and index[0] not in kind.INDEXES:
        known = ", ".join(kind.INDEXES) or "none"
        raise errors.InvalidRequest(
            f"list {kind.KIND}: index {index[0]!r} is not declared for this kind"
            f" (declared: {known})",
            kind=kind.KIND,
        )


def check_versions_args(kind: type[meta.Resource], limit: int) -> None:
    most = base.MAX_VERSIONS_PAGE_SIZE
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= most:
        raise errors.InvalidRequest(
            f"versions {kind.KIND}: limit {limit!r} is out of range; must be 1..{most}",
            kind=kind.KIND,
        )


def op_key(position: int, op: base.Op) -> tuple[str, str]:
    """The (kind, name) an op touches; InvalidRequest if it is not an op at all."""
    if isinstance(op, base.Create | base.Update):
        return op.obj.KIND, op.obj.name
    if isinstance(op, base.Delete | base.Check):
        return op.kind.KIND, op.name
    raise errors.InvalidRequest(
        f"transaction op {position}: {type(op).__name__} is not an operation"
        " (Create, Update, Delete or Check)",
        op_index=position,
    )


def check_transaction(ops: Sequence[base.Op]) -> None:
    if len(ops) > base.MAX_TRANSACTION_OPS:
        raise errors.InvalidRequest(
            f"transaction has {len(ops)} operations; at most {base.MAX_TRANSACTION_OPS} allowed"
        )
    seen: dict[tuple[str, str], int] = {}
    for position, op in enumerate(ops):
        key = op_key(position, op)
        if key in seen:
            raise errors.InvalidRequest(
                f"transaction op {position}: {key[0]} {key[1]!r} already appears in op"
                f" {seen[key]}; a record may appear once per transaction",
                kind=key[0],
                name=key[1],
                op_index=position,
            )
        seen[key] = position


# -- continue tokens ----------------------------------------------------------------------


def encode_token(kind: type[meta.Resource], index: tuple[str, str] | None, last: str) -> str:
    """The last name of a page, plus the kind and index, so that a token passed to a
    different list is refused, not misread."""
    doc = {"k": kind.KIND, "i": list(index) if index else None, "a": last}
    raw = json.dumps(doc, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_token(token: str, kind: type[meta.Resource], index: tuple[str, str] | None) -> str:
    """The last name of the previous page; InvalidRequest unless the token is one of ours,
    from the same list (kind and index), naming a name a record could have."""
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        doc = json.loads(raw)
        last = doc["a"]
        same = doc["k"] == kind.KIND and doc["i"] == (list(index) if index else None)
    except (binascii.Error, ValueError, TypeError, KeyError) as exc:
        raise errors.InvalidRequest(
            f"list {kind.KIND}: continue_token {token[:40]!r} is malformed; pass the token"
            " returned by the previous page",
            kind=kind.KIND,
        ) from exc
    if not same:
        raise errors.InvalidRequest(
            f"list {kind.KIND}: continue_token {token[:40]!r} belongs to a different list"
            " (kind or index differ)",
            kind=kind.KIND,
        )
    if not isinstance(last, str) or not _is_record_name(last):
        raise errors.InvalidRequest(
            f"list {kind.KIND}: continue_token {token[:40]!r} names no valid record; pass the"
            " token returned by the previous page",
            kind=kind.KIND,
        )
    return last


def _is_record_name(name: str) -> bool:
    try:
        meta.check_dns1123_subdomain(name)
    except ValueError:
        return False
    return True


# -- the metadata a write assigns ---------------------------------------------------------


def with_meta(obj: R, **fields: Any) -> R:
    return obj.model_copy(update={"metadata": obj.metadata.model_copy(update=fields)})


def new_uid() -> str:
    """A fresh, random record uid (the default of every backend)."""
    return str(uuid.uuid4())


def created(obj: R, now: datetime, *, uid: str | None = None) -> R:
    """obj as create stores it: a fresh uid (`uid`, else a random one), resource_version 1,
    generation and creation time defaulted when the caller left them unset."""
    return with_meta(
        obj,
        uid=uid or new_uid(),
        resource_version=1,
        generation=obj.metadata.generation or 1,
        creation_timestamp=obj.metadata.creation_timestamp or now,
    )


def updated(obj: R, *, uid: str, creation_timestamp: datetime | None) -> R:
    """obj as update stores it over a record with this uid and creation time: they belong
    to the store, so the writer's copies are replaced (after `precondition_failure` has
    refused a writer whose non-empty uid differs)."""
    return with_meta(
        obj,
        uid=uid,
        resource_version=obj.metadata.resource_version + 1,
        creation_timestamp=creation_timestamp,
    )


# -- records that expire ------------------------------------------------------------------


def expiry_seconds(obj: meta.Resource) -> int | None:
    """The record's expiry in whole Unix seconds (rounded up: never early), the unit of
    DynamoDB's TTL attribute; every backend judges expiry by this same number."""
    at = obj.forget_after()
    return None if at is None else math.ceil(at.timestamp())


def expired(obj: meta.Resource, now: datetime) -> bool:
    """Whether a store must treat `obj` as gone: get is NotFound, list leaves it out, and
    create may take its name."""
    seconds = expiry_seconds(obj)
    return seconds is not None and seconds <= now.timestamp()


# -- what a failed condition says ---------------------------------------------------------


def not_found(kind: str, name: str) -> errors.NotFound:
    return errors.NotFound(f"{kind} {name!r} not found", kind=kind, name=name)


def already_exists(kind: str, name: str) -> errors.AlreadyExists:
    return errors.AlreadyExists(f"{kind} {name!r} already exists", kind=kind, name=name)


def conflict(kind: str, name: str, expected: int, stored: int) -> errors.Conflict:
    return errors.Conflict(
        f"{kind} {name!r}: resource_version {expected} is stale, the stored one is {stored};"
        " re-read and retry",
        kind=kind,
        name=name,
    )


def precondition_failure(
    kind: str,
    name: str,
    *,
    stored_version: int,
    stored_uid: str,
    resource_version: int | None,
    uid: str | None,
) -> errors.Conflict | None:
    """Why a write conditioned on `resource_version` and `uid` (None or "": no condition)
    may not apply to the stored record; None when it may.

    The uid is checked first: after a delete and re-create, resource_version starts at 1
    again, so a version number alone cannot tell the new record from the one the writer
    read, and a writer holding the old one must not overwrite the new (Kubernetes' UID
    precondition).
    """
    if uid and uid != stored_uid:
        return errors.Conflict(
            f"{kind} {name!r}: uid {uid!r} is not the stored record's uid {stored_uid!r}; the"
            " record was deleted and re-created since it was read: re-read and retry",
            kind=kind,
            name=name,
        )
    if resource_version is not None and resource_version != stored_version:
        return conflict(kind, name, resource_version, stored_version)
    return None
