"""The cluster store: DynamoDB through boto3's low-level client, shared by stateless replicas.

Schema. One table per kind, `{prefix}-{PLURAL}` (dcnr-networks, dcnr-allocations, ...), with
partition key `name` (S): every record is its own partition, so no kind has a hot key. An
item holds `rv` (N, the resource_version), `uid` and `created` (S; they never change in a
record's life, and an update is conditioned on them so a writer's copy cannot rewrite
them), `data` (S, the record's JSON, the only thing read back), and one `ix_{index}` (S) per
declared index whose value is not None or empty. Each index has a GSI `by-{index}`: partition
key `ix_{index}`, sort key `name`, projection ALL. The GSIs are sparse (an item without the
attribute is not in the index) and one index value is one GSI partition, sorted by name.
ALL rather than KEYS_ONLY + BatchGetItem: listing by index is what the reconcilers do most
(allocations of a PNode, of a network), and records are a few KB, so paying the storage and
the write to each GSI costs less than a second round trip (and its unprocessed-keys retries)
on every list. Billing is PAY_PER_REQUEST. `init_tables` creates all of it idempotently.

Change feed. Every table has a stream (NEW_AND_OLD_IMAGES), which CreateTable asks for and
init-store turns on for tables made before it; `store.dynamodb_feed` reads it.

Expiry. A kind that `EXPIRES` (Event) has DynamoDB TTL on its `ttl` attribute (N, Unix
seconds), which init-store turns on (UpdateTimeToLive). TTL deletes an item some time after
it passed, not at once, so reads leave out expired items themselves and a create may
replace one (`#ttl <= :now` in its condition).

Reads. `get` is strongly consistent. Listing by index is a Query on the GSI: ordered by
name, but eventually consistent (DynamoDB offers nothing else on a GSI), so a just-written
record may be missing or stale there; loops re-read a record by key before writing it, and
the conditional write is the guarantee. Listing a whole kind is a consistent Scan, for
admin and resync, never a hot path: DynamoDB scans in hash order, so each page is sorted by
name but pages are not in name order; every record present throughout the listing comes
exactly once. `versions` is the same Scan projected to `name`, `uid`, `rv` and `ttl`: no
`data` is sent or parsed, though DynamoDB reads (and bills) whole items. Continue tokens
are base64url JSON of the kind, index and last key.

Writes. create = PutItem if the name is absent; update = PutItem if `rv`, `uid` and
`created` match, writing rv+1; delete = DeleteItem if `rv` and `uid` match where given (or
the item exists); transact = TransactWriteItems, Check being a ConditionCheck. An update
does not read first, so it is conditioned on the writer's uid and creation time. When it
fails on them, a differing non-empty uid is Conflict (the record was deleted and created
again), while a differing creation time, or an empty uid, is no condition: at the right
`rv`, the write is sent again with the stored values. Every condition asks for
the old item on failure (ReturnValuesOnConditionCheckFailure=ALL_OLD), which tells
NotFound (no item) from Conflict or AlreadyExists, and, for a failed transaction, which op
failed.

Errors and retries. botocore's own retries are off: this module retries throttling, 5xx,
transaction conflicts, timeouts and connection errors with full-jitter backoff, then raises
Unavailable. Owning the loop means knowing when an earlier attempt may have been applied
(a timeout after the request went out): a single write that then fails its condition on
exactly the item it wrote reports success. A transaction carries one ClientRequestToken
over its retries, so DynamoDB itself makes a replay within ten minutes idempotent; one that
fails on exactly the items it wrote (a later replay, or moto, which ignores the token) is
recognized the same way. Blocking calls run on a dedicated thread pool; boto3 clients are
thread-safe.
"""

from __future__ import annotations

import asyncio
import builtins
import dataclasses
import functools
import random
import re
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, TypeVar, cast

import boto3
import botocore.config
import botocore.exceptions

from api import resources
from api.resources import meta
from store import base, dynamodb_feed, errors, requests
from store import dynamodb_items as items

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient

R = TypeVar("R", bound=meta.Resource)
Item = items.Item
# Named here because inside the class `list` is the method.
Written = list[meta.Resource | None]
Writes = list[items.Write]
Items = list[Item]

_PREFIX = re.compile(r"^[A-Za-z0-9_.-]{1,200}\Z")
_RETRYABLE = frozenset({
    "ThrottlingException", "ProvisionedThroughputExceededException", "RequestLimitExceeded",
    "InternalServerError", "ServiceUnavailable", "TransactionConflictException",
    "TransactionInProgressException", "LimitExceededException",
})  # fmt: skip
_RETRYABLE_REASONS = frozenset(
    {"TransactionConflict", "ThrottlingError", "ProvisionedThroughputExceeded"}
)
#: Answers after which the request may have been applied all the same.
_AMBIGUOUS = frozenset({"InternalServerError", "ServiceUnavailable"})
#: Errors an operator fixes (tables, credentials, permissions): callers back off and retry.
_OPERATOR_FIXES = frozenset({
    "ResourceNotFoundException", "AccessDeniedException", "UnrecognizedClientException",
    "ExpiredTokenException", "InvalidSignatureException", "MissingAuthenticationTokenException",
})  # fmt: skip
_CONDITION_FAILED = frozenset({"ConditionalCheckFailedException"})
_CANCELLED = frozenset({"TransactionCanceledException"})
_NO_TABLE = frozenset({"ResourceNotFoundException"})
#: How often an update is re-sent with the stored uid/creation time before giving up.
_REWRITES = 3
TABLE_ACTIVE_TIMEOUT = 600.0


@dataclasses.dataclass(frozen=True, slots=True)
class ClientOptions:
    """How hard to try: attempts with full-jitter backoff between, and botocore's limits."""

    attempts: int = 6
    backoff_first: float = 0.05
    backoff_max: float = 2.0
    connect_timeout: float = 3.0
    read_timeout: float = 10.0
    max_pool_connections: int = 32


@dataclasses.dataclass(slots=True)
class _Tries:
    maybe_applied: bool = False  # an earlier attempt's request may have landed


def _code(exc: botocore.exceptions.ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _reasons(exc: botocore.exceptions.ClientError) -> list[dict[str, Any]]:
    return list(cast(list[dict[str, Any]], exc.response.get("CancellationReasons", [])))


def _status(exc: botocore.exceptions.ClientError) -> int:
    return int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))


def _retryable(exc: botocore.exceptions.ClientError) -> bool:
    code = _code(exc)
    if code in _RETRYABLE or _status(exc) >= 500:
        return True
    if code == "TransactionCanceledException":
        codes = {str(r.get("Code")) for r in _reasons(exc)}
        return bool(codes & _RETRYABLE_REASONS) and codes <= _RETRYABLE_REASONS | {"None"}
    return False


def _landed_before(reasons: list[dict[str, Any]], writes: Writes) -> bool:
    """Whether an earlier attempt, whose answer was lost, applied this transaction: every
    write fails now on exactly the item it wrote. DynamoDB already dedups a replay by its
    ClientRequestToken for ten minutes; this covers a replay found later, and servers
    (moto) that ignore the token."""
    if len(reasons) != len(writes) or all(isinstance(w.op, base.Check) for w in writes):
        return False
    return all(
        isinstance(w.op, base.Check)
        or (
            reason.get("Code") == "ConditionalCheckFailed"
            and items.judge(w, reason.get("Item"), maybe_applied=True) is None
        )
        for w, reason in zip(writes, reasons, strict=True)
    )


class DynamoStore:
    """The Store protocol on DynamoDB tables `{prefix}-{plural}`; see the module docstring."""

    def __init__(
        self,
        *,
        prefix: str,
        client: DynamoDBClient,
        executor: ThreadPoolExecutor,
        clock: base.Clock,
        options: ClientOptions,
        endpoint: str | None = None,
        streams: Any = None,
    ) -> None:
        """`streams` is a boto3 dynamodbstreams client, for the change feed."""
        self._prefix = prefix
        #: The endpoint the URL named, if any: hints must name it too, or a pasted command
        #: would target real AWS instead of the DynamoDB Local or moto the user runs.
        self._endpoint = endpoint
        self._client = client
        self._executor = executor
        self._clock = clock
        self._options = options
        self._jitter = random.Random()
        self._closed = False
        self._streams = streams
        self._feed = dynamodb_feed.StreamFeed(
            send=self._send_streams, describe_table=self._describe_table, table=self.table
        )

    @classmethod
    async def open(
        cls,
        *,
        prefix: str,
        region: str,
        endpoint: str | None,
        clock: base.Clock = base.utc_now,
        options: ClientOptions = ClientOptions(),  # frozen, so safe to share
    ) -> DynamoStore:
        """A client on the tables (credentials: boto3's default chain); creates nothing."""
        if not _PREFIX.match(prefix):
            raise errors.InvalidRequest(
                f"dynamodb table prefix {prefix!r} must be 1-200 characters of"
                " A-Z, a-z, 0-9, '_', '-' or '.'"
            )
        config = botocore.config.Config(
            region_name=region,
            # Our loop owns every retry (see the module docstring): botocore sends once.
            retries={"mode": "standard", "total_max_attempts": 1},
            connect_timeout=options.connect_timeout,
            read_timeout=options.read_timeout,
            max_pool_connections=options.max_pool_connections,
            tcp_keepalive=True,
        )
        executor = ThreadPoolExecutor(
            max_workers=options.max_pool_connections, thread_name_prefix="dynamodb-store"
        )

        def connect() -> tuple[DynamoDBClient, Any]:
            # A session of our own: boto3's default session is not safe to share.
            session = boto3.session.Session(region_name=region)
            return (
                session.client("dynamodb", endpoint_url=endpoint, config=config),
                session.client("dynamodbstreams", endpoint_url=endpoint, config=config),
            )

        try:
            client, streams = await asyncio.get_running_loop().run_in_executor(executor, connect)
        except BaseException:
            executor.shutdown(wait=False)
            raise
        return cls(
            prefix=prefix,
            client=client,
            executor=executor,
            clock=clock,
            options=options,
            endpoint=endpoint,
            streams=streams,
        )

    @property
    def client(self) -> DynamoDBClient:
        """The low-level boto3 client, for instrumentation (its event hooks), not for writes."""
        return self._client

    def table(self, kind: type[meta.Resource]) -> str:
        return items.table_name(self._prefix, kind)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        # Calls already running finish first; then the connections go.
        await asyncio.to_thread(self._executor.shutdown, wait=True)
        self._client.close()
        if self._streams is not None:
            self._streams.close()

    # -- reads -------------------------------------------------------------------------------

    async def get(self, kind: type[R], name: str) -> R:
        items.check_key(kind.KIND, "name", name)
        params = {"TableName": self.table(kind), "Key": {"name": items.s(name)}}
        response = await self._send("get_item", {**params, "ConsistentRead": True})
        if "Item" not in response:
            raise requests.not_found(kind.KIND, name)
        found = items.decode(kind, response["Item"])
        if requests.expired(found, self._clock()):  # TTL deletes it later, not at once
            raise requests.not_found(kind.KIND, name)
        return found

    async def list(
        self,
        kind: type[R],
        *,
        index: tuple[str, str] | None = None,
        limit: int = base.DEFAULT_PAGE_SIZE,
        continue_token: str | None = None,
    ) -> base.Page[R]:
        items.check_list_args(kind, index, limit)
        # One more than asked: whether a next page exists is then known, not guessed.
        params: Item = {"TableName": self.table(kind), "Limit": limit + 1}
        if continue_token is not None:
            params["ExclusiveStartKey"] = items.start_key(continue_token, kind, index)
        if index is None:
            operation = "scan"
            params["ConsistentRead"] = True
        else:
            operation = "query"
            params["IndexName"] = items.gsi_name(index[0])
            params["KeyConditionExpression"] = "#ix = :value"
            params["ExpressionAttributeNames"] = {"#ix": items.index_attr(index[0])}
            params["ExpressionAttributeValues"] = {":value": items.s(index[1])}
        response = await self._send(operation, params)
        found: Items = response.get("Items", [])
        last: str | None = None
        if len(found) > limit:
            found = found[:limit]
            last = items.page_key(found[-1])
        elif "LastEvaluatedKey" in response:  # the 1 MB page limit cut in
            last = str(response["LastEvaluatedKey"]["name"]["S"])
        now = self._clock()
        records = sorted(
            (r for r in (items.decode(kind, item) for item in found)
             if not requests.expired(r, now)),
            key=lambda r: r.name,
        )  # fmt: skip
        token = None if last is None else requests.encode_token(kind, index, last)
        return base.Page(items=records, continue_token=token)

    async def versions(
        self,
        kind: type[meta.Resource],
        *,
        limit: int = base.DEFAULT_VERSIONS_PAGE_SIZE,
        continue_token: str | None = None,
    ) -> base.Page[base.Version]:
        requests.check_versions_args(kind, limit)
        params = items.versions_scan(self.table(kind), limit + 1)
        if continue_token is not None:
            params["ExclusiveStartKey"] = items.start_key(continue_token, kind, None)
        response = await self._send("scan", params)
        found: Items = response.get("Items", [])
        last: str | None = None
        if len(found) > limit:
            found = found[:limit]
            last = items.page_key(found[-1])
        elif "LastEvaluatedKey" in response:  # the 1 MB page limit cut in (before projection)
            last = str(response["LastEvaluatedKey"]["name"]["S"])
        now = self._clock()
        versions = sorted(
            (v for v in (items.decode_version(kind, item, now) for item in found) if v is not None),
            key=lambda v: v.name,
        )
        token = None if last is None else requests.encode_token(kind, None, last)
        return base.Page(items=versions, continue_token=token)

    # -- the change feed (store.dynamodb_feed) ---------------------------------------------

    async def feed_head(self, kinds: Sequence[type[meta.Resource]]) -> str:
        return await self._feed.head(kinds)

    async def changes(
        self, cursor: str, *, limit: int = base.DEFAULT_PAGE_SIZE, held: base.Held | None = None
    ) -> base.ChangePage:
        # `held` is not asked: every record is left to be parsed when read. Pages are read
        # on the event loop, so parsing here would be there too, and all at once; read, only
        # what the consumer applies is parsed, in its chunks between yields.
        del held
        return await self._feed.changes(cursor, limit)

    async def _send_streams(self, operation: str, params: Item, expect: frozenset[str]) -> Item:
        if self._streams is None:
            raise errors.InvalidRequest(
                f"dynamodb store {self._prefix!r} was made without a streams client"
            )
        return await self._send(operation, params, expect=expect, client=self._streams)

    async def _describe_table(self, table: str) -> Item:
        answer = await self._send("describe_table", {"TableName": table})
        return cast(Item, answer["Table"])

    # -- writes ------------------------------------------------------------------------------

    async def create(self, obj: R) -> R:
        write = items.create_write(self.table(type(obj)), obj, self._clock())
        return cast(R, await self._write_one(write))

    async def update(self, obj: R) -> R:
        return cast(R, await self._write_one(items.update_write(self.table(type(obj)), obj)))

    async def delete(
        self,
        kind: type[R],
        name: str,
        *,
        resource_version: int | None = None,
        uid: str | None = None,
    ) -> None:
        op = base.Delete(kind, name, resource_version, uid)
        await self._write_one(items.version_write(self.table(kind), op))

    async def transact(self, ops: Sequence[base.Op]) -> Written:
        requests.check_transaction(ops)
        if not ops:
            return []
        now = self._clock()
        writes, tries = [self._write_for(op, now) for op in ops], _Tries()
        for _ in range(_REWRITES):
            items.check_transaction_size(writes)
            transact_items = [
                {w.action: {**w.params, "ReturnValuesOnConditionCheckFailure": "ALL_OLD"}}
                for w in writes
            ]
            # One token over this request's retries: DynamoDB applies it at most once. A
            # rewritten request is a different request and gets its own.
            params = {"TransactItems": transact_items, "ClientRequestToken": str(uuid.uuid4())}
            try:
                await self._send("transact_write_items", params, tries, expect=_CANCELLED)
                return [w.result for w in writes]
            except botocore.exceptions.ClientError as exc:
                if tries.maybe_applied and _landed_before(_reasons(exc), writes):
                    return [w.result for w in writes]
                writes = self._reread_failures(exc, writes)
        raise errors.Conflict("transaction: records kept changing under it; re-read and retry")

    def _write_for(self, op: base.Op, now: Any) -> items.Write:
        if isinstance(op, base.Create):
            return items.create_write(self.table(type(op.obj)), op.obj, now)
        if isinstance(op, base.Update):
            return items.update_write(self.table(type(op.obj)), op.obj)
        return items.version_write(self.table(op.kind), op)  # checked by check_transaction

    def _reread_failures(self, exc: botocore.exceptions.ClientError, writes: Writes) -> Writes:
        """Raise the first failed op's error; or, when the failures were only a writer's copy
        of the creation time (or its empty uid) or a passing conflict with another
        transaction, the writes to send again."""
        reasons = _reasons(exc)
        if len(reasons) != len(writes):
            raise errors.StoreError(f"transaction cancelled: {exc}") from exc
        rewritten: Writes = [*writes]
        for position, (w, reason) in enumerate(zip(writes, reasons, strict=True)):
            code = str(reason.get("Code"))
            if code == "None" or code in _RETRYABLE_REASONS:
                continue
            if code != "ConditionalCheckFailed":
                raise errors.InvalidRequest(
                    f"transaction op {position}: {w.kind.KIND} {w.name!r}: {code}:"
                    f" {reason.get('Message', '')}",
                    kind=w.kind.KIND, name=w.name, op_index=position,
                )  # fmt: skip
            verdict = items.judge(w, reason.get("Item"), maybe_applied=False)
            if isinstance(verdict, errors.StoreError):
                verdict.op_index = position
                raise verdict
            if verdict is not None:
                rewritten[position] = verdict
        return rewritten

    async def _write_one(self, write: items.Write) -> meta.Resource | None:
        tries = _Tries()
        for _ in range(_REWRITES):
            method = {"Put": "put_item", "Delete": "delete_item"}[write.action]
            params = {**write.params, "ReturnValuesOnConditionCheckFailure": "ALL_OLD"}
            try:
                await self._send(method, params, tries, expect=_CONDITION_FAILED)
                return write.result
            except botocore.exceptions.ClientError as exc:
                old = cast(Item | None, exc.response.get("Item"))
                verdict = items.judge(write, old, maybe_applied=tries.maybe_applied)
            if verdict is None:
                return write.result
            if isinstance(verdict, errors.StoreError):
                raise verdict
            write = verdict
        raise errors.Conflict(
            f"{write.kind.KIND} {write.name!r}: kept changing under the write; re-read and retry",
            kind=write.kind.KIND,
            name=write.name,
        )

    # -- tables ------------------------------------------------------------------------------

    async def init_tables(self) -> builtins.list[str]:
        """Create every kind's table and indexes if missing; a line per table saying what
        happened. Safe to run again, and from several processes at once."""
        kinds = resources.KINDS.values()
        # Concurrently: on AWS each table takes seconds to become ACTIVE.
        return builtins.list(await asyncio.gather(*(self._ensure_table(k) for k in kinds)))

    async def _ensure_table(self, kind: type[meta.Resource]) -> str:
        table, verb = self.table(kind), "exists"
        try:
            await self._send("describe_table", {"TableName": table}, expect=_NO_TABLE)
        except botocore.exceptions.ClientError:
            params = items.create_table_params(table, kind)
            try:
                await self._send("create_table", params, expect={"ResourceInUseException"})
                verb = "created"
            except botocore.exceptions.ClientError:
                pass  # a concurrent init-store created it first
        description = await self._wait_active(table)
        items.check_table(table, description)
        added: builtins.list[str] = []
        for index in items.missing_indexes(kind, description):
            # One GSI per UpdateTable call, each built before the next: DynamoDB's rule.
            await self._send("update_table", items.add_index_params(table, index))
            await self._wait_active(table)
            added.append(items.gsi_name(index))
        if not dynamodb_feed.stream_state(table, description):
            await self._send("update_table", dynamodb_feed.stream_params(table))
            await self._wait_active(table)
            added.append(f"stream {dynamodb_feed.VIEW}")
        if kind.EXPIRES:
            ttl = await self._send("describe_time_to_live", {"TableName": table})
            if not items.ttl_enabled(ttl):
                await self._send("update_time_to_live", items.ttl_params(table))
                added.append(f"TTL on {items.TTL_ATTR}")
        return f"{verb} {table}" + (f" (added {', '.join(added)})" if added else "")

    async def _wait_active(self, table: str) -> Item:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + TABLE_ACTIVE_TIMEOUT
        while True:
            response = await self._send("describe_table", {"TableName": table})
            description: Item = response["Table"]
            if items.is_active(description):
                return description
            if loop.time() > deadline:
                raise errors.Unavailable(
                    f"dynamodb table {table} is still {description.get('TableStatus')} after"
                    f" {TABLE_ACTIVE_TIMEOUT:.0f}s; check it in the AWS console and run again"
                )
            await asyncio.sleep(1.0)

    # -- the one way out -----------------------------------------------------------------------

    async def _send(
        self,
        operation: str,
        params: Item,
        tries: _Tries | None = None,
        *,
        expect: frozenset[str] | set[str] = frozenset(),
        client: Any = None,
    ) -> Item:
        """Call the client off the event loop, retrying what may pass with jittered backoff.

        An answer whose code is in `expect` is raised as the ClientError for the caller to
        read; every other failure becomes a StoreError (Unavailable once retries ran out)."""
        if self._closed:
            raise errors.InvalidRequest(f"dynamodb store {self._prefix!r} is closed")
        tries = tries or _Tries()
        call: Callable[..., Any] = getattr(client or self._client, operation)
        loop = asyncio.get_running_loop()
        delay, failure = self._options.backoff_first, ""
        for attempt in range(self._options.attempts):
            if attempt:
                await asyncio.sleep(self._jitter.uniform(0, delay))
                delay = min(delay * 2, self._options.backoff_max)
            try:
                job = functools.partial(call, **params)
                return cast(Item, await loop.run_in_executor(self._executor, job))
            except botocore.exceptions.ClientError as exc:
                if _code(exc) in expect:
                    raise
                if not _retryable(exc):
                    raise self._translate(exc, operation) from exc
                tries.maybe_applied |= _code(exc) in _AMBIGUOUS or _status(exc) >= 500
                failure = f"{_code(exc) or _status(exc)}: {exc}"
            except botocore.exceptions.HTTPClientError as exc:  # sent; the answer was lost
                tries.maybe_applied = True
                failure = f"{type(exc).__name__}: {exc}"
            except botocore.exceptions.ConnectionError as exc:  # never sent
                failure = f"{type(exc).__name__}: {exc}"
            except botocore.exceptions.NoCredentialsError as exc:
                raise errors.Unavailable(
                    "dynamodb store: no AWS credentials found (boto3 looks in AWS_* env vars,"
                    " ~/.aws, then the instance or pod role)"
                ) from exc
            except botocore.exceptions.BotoCoreError as exc:
                raise errors.StoreError(f"dynamodb {operation}: {exc}") from exc
        raise errors.Unavailable(
            f"dynamodb {operation} on prefix {self._prefix!r}: gave up after"
            f" {self._options.attempts} attempts; last error {failure}"
        )

    def _translate(self, exc: botocore.exceptions.ClientError, operation: str) -> errors.StoreError:
        code, message = _code(exc), exc.response.get("Error", {}).get("Message", str(exc))
        what = f"dynamodb {operation} on prefix {self._prefix!r}"
        if code == "ResourceNotFoundException":
            url = f"dynamodb://{self._prefix}?region={self._client.meta.region_name}"
            if self._endpoint:
                url += f"&endpoint={self._endpoint}"
            return errors.Unavailable(
                f"{what}: {message}; create the tables with"
                f" `dcnr-orchestrator init-store --store '{url}'`"
            )
        if code in _OPERATOR_FIXES:
            return errors.Unavailable(f"{what}: {code}: {message}")
        if code == "ValidationException":
            return errors.InvalidRequest(f"{what}: {message}")
        return errors.StoreError(f"{what}: {code}: {message}")
