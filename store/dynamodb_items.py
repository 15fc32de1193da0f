"""The DynamoDB backend's pure half: item layout, conditional writes, reading their failures,
and DynamoDB's own limits. No I/O; `store.dynamodb` sends what this builds. What every
backend checks the same way (arguments, tokens, precondition errors) is `store.requests`.

Kept apart so the rules that decide correctness (which condition guards which write, what a
failed condition means) read in one place without the retry and thread-pool plumbing.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from datetime import datetime
from typing import Any, TypeVar

from api.resources import meta
from store import base, errors, requests

R = TypeVar("R", bound=meta.Resource)
Item = dict[str, Any]

#: DynamoDB's limits: one item, and all items of one TransactWriteItems call.
MAX_ITEM_BYTES = 400 * 1024
MAX_TRANSACTION_BYTES = 4 * 1024 * 1024
#: DynamoDB's limit on a partition or sort key value.
MAX_KEY_BYTES = 1024


#: The item attribute DynamoDB's TTL reads: the record's `forget_after` in Unix seconds.
TTL_ATTR = "ttl"


def table_name(prefix: str, kind: type[meta.Resource]) -> str:
    return f"{prefix}-{kind.PLURAL}"


def index_attr(index: str) -> str:
    return f"ix_{index}"


def gsi_name(index: str) -> str:
    return f"by-{index}"


def s(value: str) -> dict[str, str]:
    return {"S": value}


def n(value: int) -> dict[str, str]:
    return {"N": str(value)}


@dataclasses.dataclass(frozen=True, slots=True)
class Write:
    """One conditional write, and what is needed to read its failure."""

    action: str  # Put, Delete or ConditionCheck: the TransactWriteItems member name
    params: Item
    kind: type[meta.Resource]
    name: str
    op: base.Op
    result: meta.Resource | None = None  # what a Put writes, exactly as get() will return it
    expected: int | None = None  # the resource_version the write is conditioned on


def item_size(item: Item) -> int:
    """DynamoDB's accounting: name bytes plus value bytes; a number is at most 1 + digits/2."""
    size = 0
    for attr, value in item.items():
        size += len(attr.encode())
        size += len(value["S"].encode()) if "S" in value else len(value["N"]) // 2 + 2
    return size


def decode(kind: type[R], item: Item) -> R:
    try:
        return kind.model_validate_json(item["data"]["S"])
    except (KeyError, ValueError) as exc:
        name = str(item.get("name", {}).get("S", "?"))
        raise errors.StoreError(
            f"{kind.KIND} {name!r}: stored item does not parse as a {kind.KIND}: {exc}",
            kind=kind.KIND,
            name=name,
        ) from exc


def versions_scan(table: str, limit: int) -> Item:
    """A consistent Scan of a kind's table that returns only what `decode_version` reads."""
    return {
        "TableName": table,
        "Limit": limit,
        "ConsistentRead": True,
        # All four are attribute names DynamoDB reserves or may: always through placeholders.
        "ProjectionExpression": "#name, #uid, #rv, #ttl",
        "ExpressionAttributeNames": {"#name": "name", "#uid": "uid", "#rv": "rv", "#ttl": TTL_ATTR},
    }


def decode_version(kind: type[meta.Resource], item: Item, now: datetime) -> base.Version | None:
    """The `Version` of a projected item; None if its record has expired (TTL deletes it
    some time later, not at once)."""
    try:
        name = str(item["name"]["S"])
        found = base.Version(name, str(item["uid"]["S"]), int(item["rv"]["N"]))
        expiry = int(item[TTL_ATTR]["N"]) if TTL_ATTR in item else None
    except (KeyError, ValueError) as exc:
        raise errors.StoreError(
            f"{kind.KIND}: stored item {item!r} lacks a name, uid or rv: {exc}", kind=kind.KIND
        ) from exc
    if expiry is not None and expiry <= now.timestamp():
        return None
    return found


def _created(obj: meta.Resource) -> str:
    stamp = obj.metadata.model_dump(mode="json", by_alias=True).get("creationTimestamp")
    return "" if stamp is None else str(stamp)


def record_item(obj: meta.Resource) -> tuple[Item, meta.Resource]:
    """The item for a record that already carries its final metadata, and the record as
    get() will return it (parsed back from the same JSON, a fresh object)."""
    data = obj.to_json()
    item: Item = {
        "name": s(obj.name),
        "rv": n(obj.metadata.resource_version),
        "uid": s(obj.metadata.uid),
        "created": s(_created(obj)),
        "data": s(data),
    }
    expiry = requests.expiry_seconds(obj)
    if expiry is not None:
        item[TTL_ATTR] = n(expiry)
    values = obj.index_values()
    for index in obj.INDEXES:
        value = values.get(index)
        if value:  # sparse: None means "not indexed", and DynamoDB refuses an empty key
            check_key(obj.KIND, f"index {index} value", value)
            item[index_attr(index)] = s(value)
    size = item_size(item)
    if size > MAX_ITEM_BYTES:
        raise errors.InvalidRequest(
            f"{obj.KIND} {obj.name!r}: stored size {size} bytes exceeds DynamoDB's item limit"
            f" of {MAX_ITEM_BYTES} bytes (400 KB); make its spec, status or annotations smaller",
            kind=obj.KIND,
            name=obj.name,
        )
    return item, type(obj).model_validate_json(data)


def check_key(kind: str, what: str, value: str) -> None:
    if not value or len(value.encode()) > MAX_KEY_BYTES:
        raise errors.InvalidRequest(
            f"{kind}: {what} {value[:60]!r} must be 1..{MAX_KEY_BYTES} bytes", kind=kind
        )


# -- the writes ---------------------------------------------------------------------------


def create_write(table: str, obj: meta.Resource, now: datetime) -> Write:
    item, result = record_item(requests.created(obj, now))
    params: Item = {
        "TableName": table,
        "Item": item,
        "ConditionExpression": "attribute_not_exists(#name)",
        "ExpressionAttributeNames": {"#name": "name"},
    }
    if type(obj).EXPIRES:
        # An expired record's name is free, though DynamoDB's TTL may delete it only later.
        params["ConditionExpression"] += " OR #ttl <= :now"
        params["ExpressionAttributeNames"]["#ttl"] = TTL_ATTR
        params["ExpressionAttributeValues"] = {":now": n(math.floor(now.timestamp()))}
    return Write("Put", params, type(obj), obj.name, base.Create(obj), result)


def update_write(table: str, obj: meta.Resource, stored: Item | None = None) -> Write:
    """Write obj at resource_version + 1 if the stored record is at obj's version and, when
    obj's uid is non-empty, has obj's uid. The creation time (and the uid, for a writer
    that left it empty) belong to the store, which is not read first: the write is also
    conditioned on the writer's copies, and when only those differ, `judge` sends it again
    with the stored ones (`stored`: the item it failed on)."""
    uid, created = obj.metadata.uid, obj.metadata.creation_timestamp
    if stored is not None:
        uid, stamp = stored["uid"]["S"], stored["created"]["S"]
        created = datetime.fromisoformat(stamp) if stamp else None
    item, result = record_item(requests.updated(obj, uid=uid, creation_timestamp=created))
    expected = obj.metadata.resource_version
    params = {
        "TableName": table,
        "Item": item,
        "ConditionExpression": "#rv = :rv AND #uid = :uid AND #created = :created",
        "ExpressionAttributeNames": {"#rv": "rv", "#uid": "uid", "#created": "created"},
        "ExpressionAttributeValues": {
            ":rv": n(expected), ":uid": item["uid"], ":created": item["created"],
        },
    }  # fmt: skip
    return Write("Put", params, type(obj), obj.name, base.Update(obj), result, expected)


def version_write(table: str, op: base.Delete | base.Check) -> Write:
    """A Delete or Check: conditioned on the resource_version and the uid where given, on
    existence alone without either."""
    conditions: list[str] = []
    names: dict[str, str] = {}
    values: Item = {}
    if op.resource_version is not None:
        conditions.append("#rv = :rv")
        names["#rv"], values[":rv"] = "rv", n(op.resource_version)
    if op.uid:
        conditions.append("#uid = :uid")
        names["#uid"], values[":uid"] = "uid", s(op.uid)
    if not conditions:
        conditions.append("attribute_exists(#name)")
        names["#name"] = "name"
    params: Item = {
        "TableName": table,
        "Key": {"name": s(op.name)},
        "ConditionExpression": " AND ".join(conditions),
        "ExpressionAttributeNames": names,
    }
    if values:
        params["ExpressionAttributeValues"] = values
    action = "Delete" if isinstance(op, base.Delete) else "ConditionCheck"
    return Write(action, params, op.kind, op.name, op, None, op.resource_version)


def _precondition_uid(op: base.Op) -> str | None:
    """The uid the caller conditioned op on: an Update's record's, a Delete's or Check's own."""
    if isinstance(op, base.Update):
        return op.obj.metadata.uid
    if isinstance(op, base.Delete | base.Check):
        return op.uid
    return None


def judge(w: Write, old: Item | None, *, maybe_applied: bool) -> errors.StoreError | Write | None:
    """Why w's condition failed, from the item it failed on (`old`, None if absent).

    Returns the error to raise; or a Write to send instead (an update that meets its
    preconditions, but whose writer held a different creation time, or an empty uid); or
    None when `maybe_applied` (an earlier attempt of this call may have landed) and `old`
    is exactly what this call wrote, so the failure is our own earlier success.
    """
    kind, name = w.kind.KIND, w.name
    if isinstance(w.op, base.Create):
        if maybe_applied and old and w.result and old["uid"]["S"] == w.result.metadata.uid:
            return None
        return requests.already_exists(kind, name)
    if old is None:
        # A delete retried after a lost answer finds nothing: what it asked for holds.
        if maybe_applied and isinstance(w.op, base.Delete):
            return None
        return requests.not_found(kind, name)
    if maybe_applied and "Item" in w.params and old["data"] == w.params["Item"]["data"]:
        return None
    stored = int(old["rv"]["N"])
    failure = requests.precondition_failure(
        kind,
        name,
        stored_version=stored,
        stored_uid=old["uid"]["S"],
        resource_version=w.expected,
        uid=_precondition_uid(w.op),
    )
    if failure is not None:
        return failure
    if isinstance(w.op, base.Update):
        return update_write(w.params["TableName"], w.op.obj, old)
    if w.expected is None:
        return requests.not_found(kind, name)  # an unconditioned delete only fails on absence
    return requests.conflict(kind, name, w.expected, stored)


# -- argument checks and continue tokens ----------------------------------------------------


def check_list_args(kind: type[meta.Resource], index: tuple[str, str] | None, limit: int) -> None:
    """The checks of every backend, and DynamoDB's refusal of an empty key value."""
    requests.check_list_args(kind, index, limit)
    if index is not None:
        check_key(kind.KIND, f"list by index {index[0]}: value", index[1])


def check_transaction_size(writes: Sequence[Write]) -> None:
    total = sum(item_size(w.params["Item"]) for w in writes if "Item" in w.params)
    if total > MAX_TRANSACTION_BYTES:
        raise errors.InvalidRequest(
            f"transaction writes {total} bytes; DynamoDB allows at most {MAX_TRANSACTION_BYTES}"
            " (4 MB) in one transaction: split it"
        )


def start_key(token: str, kind: type[meta.Resource], index: tuple[str, str] | None) -> Item:
    """The ExclusiveStartKey a continue token stands for: the last name (the index value is
    in the token's index, checked by `requests.decode_token` to be this list's)."""
    key: Item = {"name": s(requests.decode_token(token, kind, index))}
    if index is not None:
        key[index_attr(index[0])] = s(index[1])
    return key


def page_key(item: Item) -> str:
    return str(item["name"]["S"])


# -- tables ---------------------------------------------------------------------------------

#: Streams carry both images: a delete's tombstone needs the old record's name and version.
STREAM_VIEW = "NEW_AND_OLD_IMAGES"


def gsi_spec(index: str) -> Item:
    return {
        "IndexName": gsi_name(index),
        "KeySchema": [
            {"AttributeName": index_attr(index), "KeyType": "HASH"},
            {"AttributeName": "name", "KeyType": "RANGE"},
        ],
        "Projection": {"ProjectionType": "ALL"},
    }


def _attribute(name: str) -> Item:
    return {"AttributeName": name, "AttributeType": "S"}


def create_table_params(table: str, kind: type[meta.Resource]) -> Item:
    params: Item = {
        "TableName": table,
        "KeySchema": [{"AttributeName": "name", "KeyType": "HASH"}],
        "AttributeDefinitions": [_attribute("name")]
        + [_attribute(index_attr(index)) for index in kind.INDEXES],
        "BillingMode": "PAY_PER_REQUEST",
        "StreamSpecification": stream_spec(),
    }
    if kind.INDEXES:
        params["GlobalSecondaryIndexes"] = [gsi_spec(index) for index in kind.INDEXES]
    return params


def stream_spec() -> Item:
    """The table's stream, which the change feed reads (store.dynamodb_feed)."""
    return {"StreamEnabled": True, "StreamViewType": STREAM_VIEW}


def add_index_params(table: str, index: str) -> Item:
    """UpdateTable adding one GSI to a table made before the index was declared."""
    return {
        "TableName": table,
        "AttributeDefinitions": [_attribute("name"), _attribute(index_attr(index))],
        "GlobalSecondaryIndexUpdates": [{"Create": gsi_spec(index)}],
    }


def ttl_params(table: str) -> Item:
    """UpdateTimeToLive making DynamoDB delete a kind's items once their `ttl` passed."""
    return {
        "TableName": table,
        "TimeToLiveSpecification": {"Enabled": True, "AttributeName": TTL_ATTR},
    }


def ttl_enabled(description: Item) -> bool:
    """From DescribeTimeToLive: TTL is on (or turning on) for our attribute."""
    found = description.get("TimeToLiveDescription", {})
    return bool(
        found.get("TimeToLiveStatus") in ("ENABLED", "ENABLING")
        and found.get("AttributeName") == TTL_ATTR
    )


def check_table(table: str, description: Item) -> None:
    """A table of ours has the key schema we write; anything else is somebody else's table."""
    keys = [(k["AttributeName"], k["KeyType"]) for k in description.get("KeySchema", [])]
    if keys != [("name", "HASH")]:
        raise errors.InvalidRequest(
            f"dynamodb table {table} exists with key schema {keys}, expected partition key"
            " 'name' (S) only; choose another table prefix"
        )


def is_active(description: Item) -> bool:
    indexes = description.get("GlobalSecondaryIndexes", [])
    return description.get("TableStatus") == "ACTIVE" and all(
        gsi.get("IndexStatus") == "ACTIVE" for gsi in indexes
    )


def missing_indexes(kind: type[meta.Resource], description: Item) -> list[str]:
    present = {gsi["IndexName"] for gsi in description.get("GlobalSecondaryIndexes", [])}
    return [index for index in kind.INDEXES if gsi_name(index) not in present]
