"""What every backend's change feed checks the same way: cursors, limits, kinds. Pure.

A cursor is base64url JSON `{"b": backend, "k": [kinds], "p": position}`: the backend and
kinds travel with it so a cursor handed to the wrong store, or garbled, is refused with a
message instead of being misread; `p` is the backend's own (an integer sequence for
SQLite, per-shard positions for DynamoDB).
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable, Sequence
from typing import Any

from api import resources
from api.resources import meta
from store import base, errors

MAX_CHANGES = 1000


def check_kinds(kinds: Sequence[type[meta.Resource]]) -> list[str]:
    """The KIND strings of a feed_head call, sorted; InvalidRequest for none or unknown."""
    names = sorted({getattr(k, "KIND", repr(k)) for k in kinds})
    unknown = [n for n in names if n not in resources.KINDS]
    if not names or unknown:
        raise errors.InvalidRequest(
            f"feed_head: kinds {unknown or names!r} must be one or more stored kinds"
            f" (known: {', '.join(sorted(resources.KINDS))})"
        )
    return names


def check_limit(limit: int) -> None:
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_CHANGES:
        raise errors.InvalidRequest(
            f"changes: limit {limit!r} is out of range; must be 1..{MAX_CHANGES}"
        )


def encode(backend: str, kinds: Sequence[str], position: Any) -> str:
    doc = {"b": backend, "k": list(kinds), "p": position}
    raw = json.dumps(doc, separators=(",", ":"), sort_keys=True).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode(cursor: str, backend: str) -> tuple[list[str], Any]:
    """(kinds, position) of one of this backend's cursors; InvalidRequest otherwise."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        doc = json.loads(raw)
        kinds, position, made_by = doc["k"], doc["p"], doc["b"]
        ok = isinstance(kinds, list) and all(k in resources.KINDS for k in kinds) and kinds
    except (binascii.Error, ValueError, TypeError, KeyError) as exc:
        raise errors.InvalidRequest(
            f"changes: cursor {cursor[:40]!r} is malformed; pass one returned by feed_head"
            " or by a previous page"
        ) from exc
    if made_by != backend or not ok:
        raise errors.InvalidRequest(
            f"changes: cursor {cursor[:40]!r} was made by a {made_by!r} store for kinds"
            f" {kinds!r}, not by this {backend!r} store"
        )
    return kinds, position


def kind_of(name: str) -> type[meta.Resource]:
    return resources.KINDS[name]


def gone(cursor: str, why: str) -> errors.Gone:
    return errors.Gone(
        f"changes: cursor {cursor[:40]!r} is too old: {why}; list again and take a new"
        " cursor with feed_head"
    )


def tombstone(kind: str, name: str, resource_version: int, uid: str) -> base.Change:
    return base.Change(kind, name, resource_version, uid, None)


def written(record: meta.Resource) -> base.Change:
    meta_ = record.metadata
    return base.Change(record.KIND, record.name, meta_.resource_version, meta_.uid, record)


def unparsed(
    kind: str, name: str, resource_version: int, uid: str, load: Callable[[], meta.Resource]
) -> base.Change:
    """A written record's change whose record `load` parses when first read."""
    return base.Change(kind, name, resource_version, uid, None, load=load)
