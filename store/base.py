"""The Store protocol: what every backend provides, and the operations of a transaction.

Semantics every backend shares (the conformance suite checks them):

- `create` fails with AlreadyExists if the name is taken. It always assigns a fresh uid,
  sets resource_version to 1, generation to 1 when the caller left it 0, and
  creation_timestamp from the store's clock when the caller left it unset; it returns the
  stored record.
- `update` and `delete` are conditioned on `metadata.resource_version` (for delete, on the
  `resource_version` argument when given): Conflict when it differs, NotFound when the
  record is gone. An update returns the record with resource_version bumped by one. The
  store never touches `generation`: bumping it when spec changes is the writer's job
  (see `api.resources.meta`), as the API server's, not etcd's, is in Kubernetes.
- uid and creation_timestamp belong to the store: an update never changes them, and a
  writer's differing creation_timestamp is ignored. The uid is also a precondition (as
  Kubernetes' UID precondition), because a record deleted and created again restarts at
  resource_version 1 and a version number alone cannot tell it from the record a writer
  read before the delete: an update whose `metadata.uid` is non-empty, and a delete or
  Check given a non-empty `uid`, is conditioned on the stored uid too, and a different one
  is Conflict naming both uids (a delete given a uid and no resource_version is
  conditioned on the uid alone). An empty uid means no such condition. Records read from
  the store carry their uid, so a writer that updates what it read is protected unasked.
- `list` returns a page at a time; `continue_token` is opaque. `index=("network", "mnist")`
  restricts to records whose `index_values()["network"]` equals "mnist"; only the kind's
  declared INDEXES may be named. Order: a list by index is in name order across all its
  pages. A list of a whole kind returns every record present throughout the listing exactly
  once across its pages, each page sorted by name, but promises no order across pages
  (DynamoDB scans in hash order; SQLite happens to give full name order). A record created
  or deleted during a listing may or may not appear.
- `versions` is a listing of a whole kind that returns, per record, only its name, uid and
  resource_version (`Version`): what a reader needs to tell which records it holds are
  stale, at the cost of reading keys, not parsing records. Paged and ordered as `list` of
  a whole kind (its continue tokens are such a list's; at most `MAX_VERSIONS_PAGE_SIZE` a
  page), and an expired record is left out as `list` leaves it out (though not deleted on
  the way).
  DynamoDB still reads, and charges read capacity for, every whole item it scans: cheap
  in CPU and bytes sent, not in capacity.
- `transact` applies up to MAX_TRANSACTION_OPS operations atomically, each with its own
  condition; if any condition fails nothing is written. One record may appear once.
- Every returned record is a fresh object; mutating it never changes the store.

The change feed (`feed_head`, `changes`) is how a reader follows the store without
re-reading it, Kubernetes' list-then-watch:

    cursor = await store.feed_head([PNode, Allocation])   # 1. where the feed ends now
    ...list each kind...                                   # 2. the initial state
    page = await store.changes(cursor)                     # 3. everything written since 1
    ...apply page.changes...; cursor = page.cursor         #    and so on, from page.cursor

- Every committed write of a record of a kind the cursor follows (create, update, delete,
  an expired record removed) appears exactly once, as a `Change`: the record as written,
  or a tombstone (record None) carrying the deleted record's last resource_version. The
  changes of one record come in the order they were committed; changes of different
  records may interleave differently from commit order on DynamoDB (one stream shard per
  partition range), and always do in commit order on SQLite.
- A change written after step 1 may also be present in the listing of step 2, so a
  consumer applies a change only when its resource_version is newer than what it holds
  (a tombstone removes the name when it has the held record's uid and a resource_version
  at least the one held; a record deleted and created again restarts at 1 under a new uid).
- `page.cursor` is after every change in the page: a consumer that saves it together with
  the effect of applying the page, and resumes from it after a crash, neither misses nor
  applies twice. A page may be empty; `page.more` says whether another is ready now.
- A cursor the feed can no longer serve raises `errors.Gone`: go back to step 1. SQLite
  keeps the newest `feed_retention` changes (a cursor older than them is Gone); DynamoDB
  Streams keep 24 hours, and a cursor naming a replaced stream is Gone. A cursor is
  opaque and belongs to the store (database file, table prefix) that made it.
"""

from __future__ import annotations

import builtins
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Generic, Protocol, TypeVar

from api.resources.meta import Resource

R = TypeVar("R", bound=Resource)
T = TypeVar("T")

#: DynamoDB's TransactWriteItems limit; both backends enforce it so code that works on one
#: works on the other.
MAX_TRANSACTION_OPS = 100
DEFAULT_PAGE_SIZE = 500
#: A page of `versions` holds a few dozen bytes a record, so its pages are larger.
DEFAULT_VERSIONS_PAGE_SIZE = 5000
MAX_VERSIONS_PAGE_SIZE = 10_000

Clock = Callable[[], datetime]


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class Create:
    obj: Resource


@dataclass(frozen=True, slots=True)
class Update:
    """Write `obj`, conditioned on the stored resource_version equal to obj's, and on the
    stored uid equal to obj's when obj's is non-empty."""

    obj: Resource


@dataclass(frozen=True, slots=True)
class Delete:
    """Delete the record, conditioned on resource_version and uid where given (not None)."""

    kind: type[Resource]
    name: str
    resource_version: int | None = None
    uid: str | None = None


@dataclass(frozen=True, slots=True)
class Check:
    """Write nothing; fail the transaction unless the record is at this resource_version
    (and, when `uid` is given, is the record with this uid)."""

    kind: type[Resource]
    name: str
    resource_version: int
    uid: str | None = None


Op = Create | Update | Delete | Check


@dataclass(frozen=True, slots=True)
class Page(Generic[T]):
    items: list[T]
    continue_token: str | None = None


@dataclass(frozen=True, slots=True)
class Version:
    """A record's identity and version, as `versions` lists them."""

    name: str
    uid: str
    resource_version: int


class Change:
    """One committed write from the change feed: `record` as written, or None when the
    record was deleted (then `resource_version` and `uid` are the deleted record's).

    kind, name, uid and resource_version come from the feed itself (SQLite's columns, the
    stream record's key attributes), never from the record's JSON, so a consumer can tell a
    change it already holds for the price of a lookup. The record is parsed when `record`
    is first read, unless the store parsed it already (see `Store.changes`' `held`); a
    change nobody reads the record of is never parsed (`parsed` says whether it was).
    """

    __slots__ = ("_load", "_record", "kind", "name", "resource_version", "uid")

    def __init__(
        self,
        kind: str,
        name: str,
        resource_version: int,
        uid: str,
        record: Resource | None,
        *,
        load: Callable[[], Resource] | None = None,
    ) -> None:
        """`record` parsed already, or None with `load` parsing it when first read (None
        with no `load`: a deletion)."""
        self.kind = kind
        self.name = name
        self.resource_version = resource_version
        self.uid = uid
        self._record = record
        self._load = load

    @property
    def deleted(self) -> bool:
        return self._record is None and self._load is None

    @property
    def parsed(self) -> bool:
        """Whether the record has been parsed (a deletion has nothing to parse: True)."""
        return self._load is None

    @property
    def record(self) -> Resource | None:
        if self._load is not None:
            self._record, self._load = self._load(), None
        return self._record

    def __repr__(self) -> str:
        what = "deleted" if self.deleted else "parsed" if self.parsed else "unparsed"
        return (
            f"Change({self.kind} {self.name!r} uid={self.uid!r} rv={self.resource_version}, {what})"
        )


#: `Store.changes`' hint: (kind, name, uid, resource_version) → whether the caller holds
#: that record at that version or newer, so the store need not parse it.
Held = Callable[[str, str, str, int], bool]


@dataclass(frozen=True, slots=True)
class ChangePage:
    changes: list[Change]
    #: After every change in `changes`: resume here.
    cursor: str
    #: Another page is ready now (this one hit its limit).
    more: bool = False


class Store(Protocol):
    async def get(self, kind: type[R], name: str) -> R: ...

    async def list(
        self,
        kind: type[R],
        *,
        index: tuple[str, str] | None = None,
        limit: int = DEFAULT_PAGE_SIZE,
        continue_token: str | None = None,
    ) -> Page[R]: ...

    async def versions(
        self,
        kind: type[Resource],
        *,
        limit: int = DEFAULT_VERSIONS_PAGE_SIZE,
        continue_token: str | None = None,
    ) -> Page[Version]:
        """The name, uid and resource_version of every record of a kind, a page at a time."""
        ...

    async def create(self, obj: R) -> R: ...

    async def update(self, obj: R) -> R: ...

    async def delete(
        self,
        kind: type[R],
        name: str,
        *,
        resource_version: int | None = None,
        uid: str | None = None,
    ) -> None: ...

    async def transact(self, ops: Sequence[Op]) -> builtins.list[Resource | None]:
        """Apply ops atomically; returns, per op, the written record (None for Delete/Check)."""
        ...

    async def feed_head(self, kinds: Sequence[type[Resource]]) -> str:
        """A change-feed cursor at the end of the feed now, following `kinds`."""
        ...

    async def changes(
        self, cursor: str, *, limit: int = DEFAULT_PAGE_SIZE, held: Held | None = None
    ) -> ChangePage:
        """The changes after `cursor`, oldest first, at most `limit`; Gone if the feed no
        longer holds them, InvalidRequest if `cursor` is not one of this store's.

        `held` is a hint: a written record for which it answers True is left unparsed
        (`Change.record` parses it if read after all), so a consumer's own writes, which it
        holds already, cost it no parse. SQLite parses the other records on its worker
        thread, off the event loop, so `held` may be called on that thread while the
        consumer's loop runs: it must only read, and the consumer decides again when it
        applies a change (what it holds may have moved meanwhile). DynamoDB, whose pages
        are read on the event loop anyway, leaves every record to be parsed when read.
        Either way every change is in the page."""
        ...

    async def close(self) -> None: ...


async def iterate(
    store: Store,
    kind: type[R],
    *,
    index: tuple[str, str] | None = None,
    page_size: int = DEFAULT_PAGE_SIZE,
) -> AsyncIterator[R]:
    """Every record of a kind (optionally by index), following pages."""
    token: str | None = None
    while True:
        page = await store.list(kind, index=index, limit=page_size, continue_token=token)
        for item in page.items:
            yield item
        if page.continue_token is None:
            return
        token = page.continue_token


async def list_all(store: Store, kind: type[R], *, index: tuple[str, str] | None = None) -> list[R]:
    return [item async for item in iterate(store, kind, index=index)]


async def all_versions(store: Store, kind: type[Resource]) -> dict[str, Version]:
    """Name → `Version` of every record of a kind, following pages."""
    found: dict[str, Version] = {}
    token: str | None = None
    while True:
        page = await store.versions(kind, continue_token=token)
        found.update((v.name, v) for v in page.items)
        if page.continue_token is None:
            return found
        token = page.continue_token
