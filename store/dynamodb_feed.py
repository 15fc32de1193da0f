"""The DynamoDB change feed: each kind's table has a stream (NEW_AND_OLD_IMAGES), read by
shard iterators.

Position. A cursor holds, per followed kind, the stream's ARN and a position per shard:

    "h"         the shard's start (TRIM_HORIZON): a shard born after the cursor was taken
    "=SEQ"      after the record with sequence number SEQ (AFTER_SEQUENCE_NUMBER)
    "@TOKEN"    where the shard ended when `feed_head` ran; DynamoDB names no sequence
                number for "now", so this is a LATEST iterator kept in this process's
                memory under TOKEN, renewed by every read (an iterator lives 15 minutes)
    "x"         a closed shard read to its end

So a cursor resumes in any process once its shards have each delivered a record; a "@"
position resumes only in the process that made it and while it polls at least every 15
minutes: otherwise Gone, and the consumer re-lists (as it does on every start anyway).

Order. One record's changes are in one shard, in order. Shards are read one after the other
within a page, so changes of different records interleave in no particular order. A shard
that closes (a split) hands over to its children, which start at "h" once the parent has
been read to its end, as DynamoDB's ordering requires.

Gone. A stream that is no longer the table's latest (streams turned off and on again), a
trimmed position (older than 24 hours: TrimmedDataAccessException), a vanished shard, an
expired iterator with no sequence number to fall back on. The table's stream ARN is
re-checked at most every STREAM_RECHECK seconds, so a replaced stream is noticed within it.
"""

from __future__ import annotations

import asyncio
import functools
import secrets
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import botocore.exceptions

from api.resources import meta
from store import base, errors, feed
from store import dynamodb_items as items

BACKEND = "dynamodb"
VIEW = items.STREAM_VIEW
#: Seconds between checks that a table's stream is still the one a cursor names.
STREAM_RECHECK = 30.0
#: Live shard iterators kept (by stream, shard and position); the oldest go first.
ITERATORS_KEPT = 10_000
#: Answers that mean the position is gone, not that the call failed.
_GONE = frozenset({"TrimmedDataAccessException", "ResourceNotFoundException"})
_EXPIRED = frozenset({"ExpiredIteratorException"})

Item = dict[str, Any]
#: (operation, params, expected error codes) -> the answer; DynamoStore._send on the
#: streams client.
Send = Callable[[str, Item, frozenset[str]], Awaitable[Item]]


def stream_params(table: str) -> Item:
    """UpdateTable turning the table's stream on, as CreateTable's StreamSpecification."""
    return {"TableName": table, "StreamSpecification": items.stream_spec()}


def stream_state(table: str, description: Item) -> bool:
    """Whether the table's stream is on with our view; InvalidRequest when it is on with
    another view (changing it means a new stream: an operator's decision)."""
    spec = description.get("StreamSpecification") or {}
    if not spec.get("StreamEnabled"):
        return False
    if spec.get("StreamViewType") != VIEW:
        raise errors.InvalidRequest(
            f"dynamodb table {table} has a stream with view {spec.get('StreamViewType')!r};"
            f" the change feed needs {VIEW!r}: turn the stream off and run init-store again"
        )
    return True


def change_of(kind: type[meta.Resource], record: Item) -> base.Change:
    """A stream record as a Change: the new image's record, or a tombstone from the old.
    Name, uid and resource_version are the image's own attributes; the record's JSON is
    parsed only when the consumer reads it (`base.Change.record`)."""
    body = record["dynamodb"]
    if record.get("eventName") == "REMOVE":
        old = body["OldImage"]
        name, uid = str(old["name"]["S"]), str(old["uid"]["S"])
        return feed.tombstone(kind.KIND, name, int(old["rv"]["N"]), uid)
    new = body["NewImage"]
    name, uid, version = str(new["name"]["S"]), str(new["uid"]["S"]), int(new["rv"]["N"])
    return feed.unparsed(kind.KIND, name, version, uid, functools.partial(items.decode, kind, new))


class StreamFeed:
    """feed_head and changes for DynamoStore; `send` calls the streams client, `describe`
    the table."""

    def __init__(
        self,
        *,
        send: Send,
        describe_table: Callable[[str], Awaitable[Item]],
        table: Callable[[type[meta.Resource]], str],
    ) -> None:
        self._send = send
        self._describe_table = describe_table
        self._table = table
        self._iterators: OrderedDict[tuple[str, str, str], str] = OrderedDict()
        #: kind → (stream ARN, loop time it was read)
        self._arns: dict[str, tuple[str, float]] = {}

    async def head(self, kinds: Sequence[type[meta.Resource]]) -> str:
        names = feed.check_kinds(kinds)
        position: Item = {}
        for name in names:
            arn = await self._stream_arn(name, fresh=True)
            shards: dict[str, str] = {}
            for shard in await self._shards(arn):
                if "EndingSequenceNumber" in shard.get("SequenceNumberRange", {}):
                    continue  # closed: everything in it is before now
                answer = await self._send(
                    "get_shard_iterator",
                    {"StreamArn": arn, "ShardId": shard["ShardId"], "ShardIteratorType": "LATEST"},
                    frozenset(),
                )
                token = "@" + secrets.token_urlsafe(12)
                self._keep(arn, shard["ShardId"], token, str(answer["ShardIterator"]))
                shards[shard["ShardId"]] = token
            position[name] = {"a": arn, "s": shards}
        return feed.encode(BACKEND, names, position)

    async def changes(self, cursor: str, limit: int) -> base.ChangePage:
        feed.check_limit(limit)
        names, position = feed.decode(cursor, BACKEND)
        position = _checked(cursor, names, position)
        out: list[base.Change] = []
        more = False
        for name in names:
            entry = position[name]
            arn = entry["a"]
            if await self._stream_arn(name, fresh=False) != arn:
                raise feed.gone(cursor, f"the {name} table's stream was replaced")
            for shard_id in sorted(entry["s"]):
                if len(out) >= limit:
                    more = True
                    break
                more |= await self._read_shard(
                    cursor, feed.kind_of(name), arn, entry["s"], shard_id, out, limit
                )
        return base.ChangePage(out, feed.encode(BACKEND, names, position), more)

    async def _read_shard(
        self,
        cursor: str,
        kind: type[meta.Resource],
        arn: str,
        shards: dict[str, str],
        shard_id: str,
        out: list[base.Change],
        limit: int,
    ) -> bool:
        """Append the shard's next records to `out`, moving its position in `shards`;
        whether it may hold more right now."""
        at = shards[shard_id]
        if at == "x":
            return False
        room = limit - len(out)
        answer = await self._records(cursor, arn, shard_id, at, room)
        records = answer.get("Records", [])
        out.extend(change_of(kind, r) for r in records)
        if records:
            at = "=" + str(records[-1]["dynamodb"]["SequenceNumber"])
        following = answer.get("NextShardIterator")
        if following is None:  # closed and read to its end: its children take over
            shards[shard_id] = "x"
            for child in await self._shards(arn):
                if child.get("ParentShardId") == shard_id and child["ShardId"] not in shards:
                    shards[child["ShardId"]] = "h"
            return bool(records)
        shards[shard_id] = at
        self._keep(arn, shard_id, at, str(following))
        return len(records) >= room

    async def _records(self, cursor: str, arn: str, shard_id: str, at: str, room: int) -> Item:
        for attempt in range(2):
            iterator = await self._iterator(cursor, arn, shard_id, at, fresh=attempt > 0)
            try:
                return await self._send(
                    "get_records", {"ShardIterator": iterator, "Limit": room}, _GONE | _EXPIRED
                )
            except botocore.exceptions.ClientError as exc:
                code = str(exc.response.get("Error", {}).get("Code", ""))
                if code in _GONE:
                    raise feed.gone(cursor, f"shard {shard_id} of {arn}: {code}") from exc
                self._iterators.pop((arn, shard_id, at), None)
                if at.startswith("@"):
                    raise feed.gone(cursor, f"shard {shard_id}: its head iterator expired") from exc
        raise feed.gone(cursor, f"shard {shard_id}: iterators keep expiring")

    async def _iterator(self, cursor: str, arn: str, shard_id: str, at: str, *, fresh: bool) -> str:
        kept = None if fresh else self._iterators.get((arn, shard_id, at))
        if kept is not None:
            self._iterators.move_to_end((arn, shard_id, at))
            return kept
        if at.startswith("@"):
            raise feed.gone(
                cursor,
                f"shard {shard_id}'s position was taken by another process or long ago",
            )
        params: Item = {"StreamArn": arn, "ShardId": shard_id}
        if at == "h":
            params["ShardIteratorType"] = "TRIM_HORIZON"
        else:
            params["ShardIteratorType"] = "AFTER_SEQUENCE_NUMBER"
            params["SequenceNumber"] = at[1:]
        try:
            answer = await self._send("get_shard_iterator", params, _GONE)
        except botocore.exceptions.ClientError as exc:
            raise feed.gone(cursor, f"shard {shard_id} of {arn}: {exc}") from exc
        return str(answer["ShardIterator"])

    def _keep(self, arn: str, shard_id: str, at: str, iterator: str) -> None:
        self._iterators[(arn, shard_id, at)] = iterator
        self._iterators.move_to_end((arn, shard_id, at))
        while len(self._iterators) > ITERATORS_KEPT:
            self._iterators.popitem(last=False)

    async def _shards(self, arn: str) -> list[Item]:
        shards: list[Item] = []
        params: Item = {"StreamArn": arn}
        while True:
            answer = await self._send("describe_stream", params, frozenset())
            description = answer["StreamDescription"]
            shards.extend(description.get("Shards", []))
            last = description.get("LastEvaluatedShardId")
            if not last:
                return shards
            params = {"StreamArn": arn, "ExclusiveStartShardId": last}

    async def _stream_arn(self, name: str, *, fresh: bool) -> str:
        now = asyncio.get_running_loop().time()
        known = self._arns.get(name)
        if known is not None and not fresh and now - known[1] < STREAM_RECHECK:
            return known[0]
        table = self._table(feed.kind_of(name))
        description = await self._describe_table(table)
        arn = description.get("LatestStreamArn")
        if not arn or not stream_state(table, description):
            raise errors.Unavailable(
                f"dynamodb table {table} has no stream; the change feed needs one: run"
                " `dcnr-orchestrator init-store` with this store's URL"
            )
        self._arns[name] = (str(arn), now)
        return str(arn)


def _checked(cursor: str, names: list[str], position: Any) -> dict[str, Item]:
    """The decoded position, shaped as head() makes it; InvalidRequest otherwise."""
    ok = isinstance(position, dict) and set(position) == set(names)
    for name in names if ok else []:
        entry = position[name]
        ok = (
            isinstance(entry, dict)
            and isinstance(entry.get("a"), str)
            and isinstance(entry.get("s"), dict)
            and all(
                isinstance(v, str) and (v in ("h", "x") or v[:1] in ("=", "@"))
                for v in entry["s"].values()
            )
        )
        if not ok:
            break
    if not ok:
        raise errors.InvalidRequest(f"changes: cursor {cursor[:40]!r} is malformed")
    return dict(position)
