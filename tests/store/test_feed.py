"""The change feed of store/base.py (feed_head, changes), checked identically on every backend:
SQLite's change sequence and DynamoDB Streams read over HTTP from the moto server."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from api.resources import event, job, meta, pnode
from store import base, errors, sqlite
from tests.store import records
from tests.store.children import Child
from tests.store.conftest import Backend, FakeClock

CONSUMER = Path(__file__).with_name("feed_consumer.py")

Seen = list[tuple[str, str, int, bool]]


def seen(changes: list[base.Change]) -> Seen:
    return [(c.kind, c.name, c.resource_version, c.record is None) for c in changes]


async def drain(store: base.Store, cursor: str, *, limit: int = 500) -> tuple[Seen, str]:
    """Every change after `cursor` as (kind, name, rv, deleted), and the cursor after them."""
    out: Seen = []
    while True:
        page = await store.changes(cursor, limit=limit)
        out += seen(page.changes)
        cursor = page.cursor
        if not page.more:
            return out, cursor


def job_at(name: str, step: int) -> job.Job:
    record = records.job_record(name)
    record.status.step = step
    return record


# -- what the feed holds ----------------------------------------------------------------------


async def test_every_write_after_the_head_comes_once_with_its_record_or_a_tombstone(store):
    await store.create(records.job_record("before"))  # before the head: not in the feed
    cursor = await store.feed_head([job.Job])
    a = await store.create(job_at("a", 0))
    changed = a.model_copy(deep=True)
    changed.status.step = 7
    a2 = await store.update(changed)
    b = await store.create(records.job_record("b"))
    await store.delete(job.Job, "a", resource_version=2)
    await store.transact([base.Create(records.job_record("c")), base.Delete(job.Job, "b")])

    page = await store.changes(cursor)
    assert not page.more
    by_record = {
        name: [(c.resource_version, c.record is None) for c in page.changes if c.name == name]
        for name in ("a", "b", "c")
    }
    assert by_record == {
        "a": [(1, False), (2, False), (2, True)],
        "b": [(1, False), (1, True)],
        "c": [(1, False)],
    }
    assert len(page.changes) == 6  # nothing else: not "before", nothing twice
    assert {c.uid for c in page.changes if c.name == "a"} == {a.metadata.uid}  # tombstone too
    records_of_a = [c.record for c in page.changes if c.name == "a" and c.record is not None]
    assert [r.model_dump() for r in records_of_a] == [a.model_dump(), a2.model_dump()]
    assert {c.kind for c in page.changes} == {job.Job.KIND}
    assert isinstance(records_of_a[0], job.Job)
    assert b.metadata.uid == next(c.record for c in page.changes if c.name == "b").metadata.uid

    after = await store.changes(page.cursor)
    assert after.changes == []
    assert not after.more


async def test_a_change_the_reader_holds_comes_unparsed_with_its_identity_from_the_feed(store):
    """`held` names what the reader holds; those records come unparsed (parsed, as written,
    only if read after all), the others as written, deletions as tombstones; every change
    is in the page either way, and name, uid and version come without a parse."""
    cursor = await store.feed_head([job.Job])
    a = await store.create(job_at("a", 0))
    b = await store.create(job_at("b", 0))
    changed = b.model_copy(deep=True)
    changed.status.step = 3
    b2 = await store.update(changed)
    await store.delete(job.Job, "a", resource_version=1)
    asked: list[tuple[str, str, str, int]] = []

    def held(kind: str, name: str, uid: str, resource_version: int) -> bool:
        asked.append((kind, name, uid, resource_version))
        return name == "a"

    page = await store.changes(cursor, held=held)
    identity = {
        (c.kind, c.name, c.uid, c.resource_version, c.deleted, c.parsed) for c in page.changes
    }
    assert len(page.changes) == 4
    assert (job.Job.KIND, "a", a.metadata.uid, 1, False, False) in identity  # held: unparsed
    assert (job.Job.KIND, "a", a.metadata.uid, 1, True, True) in identity  # its tombstone
    of_a = next(c for c in page.changes if c.name == "a" and not c.deleted)
    assert of_a.record is not None
    assert of_a.record.model_dump() == a.model_dump()
    assert of_a.parsed  # once read
    of_b = [c for c in page.changes if c.name == "b"]
    assert [(c.uid, c.resource_version) for c in of_b] == [(b.metadata.uid, 1), (b.metadata.uid, 2)]
    assert [c.record.model_dump() for c in of_b if c.record is not None] == [
        b.model_dump(),
        b2.model_dump(),
    ]
    written = {
        (job.Job.KIND, x.name, x.metadata.uid, x.metadata.resource_version) for x in (a, b, b2)
    }
    assert set(asked) <= written  # asked (if at all) of written records only, by identity


async def test_a_write_that_failed_its_condition_leaves_nothing_in_the_feed(store):
    await store.create(records.job_record("a"))
    cursor = await store.feed_head([job.Job])
    with pytest.raises(errors.Conflict):
        await store.transact(
            [base.Create(records.job_record("b")), base.Delete(job.Job, "a", resource_version=9)]
        )
    with pytest.raises(errors.AlreadyExists):
        await store.create(records.job_record("a"))
    page = await store.changes(cursor)
    assert page.changes == []
    await store.create(records.job_record("c"))
    changes, _ = await drain(store, page.cursor)
    assert changes == [(job.Job.KIND, "c", 1, False)]


async def test_the_feed_follows_only_the_kinds_of_its_head(store):
    cursor = await store.feed_head([pnode.PNode])
    await store.create(records.job_record("j"))
    await store.create(records.pnode_record("p"))
    await store.create(records.network_record("n"))
    changes, _ = await drain(store, cursor)
    assert changes == [(pnode.PNode.KIND, "p", 1, False)]


async def test_pages_cover_every_change_once_in_order_per_record(store):
    cursor = await store.feed_head([job.Job])
    for i in range(7):
        await store.create(job_at(f"j{i}", 0))
    for i in range(0, 7, 2):
        current = await store.get(job.Job, f"j{i}")
        current.status.step = 1
        await store.update(current)
    pages = []
    while True:
        page = await store.changes(cursor, limit=3)
        assert len(page.changes) <= 3
        pages.append(page)
        cursor = page.cursor
        if not page.more:
            break
    assert len(pages) >= 4
    everything = [c for p in pages for c in p.changes]
    assert sorted((c.name, c.resource_version) for c in everything) == sorted(
        [(f"j{i}", 1) for i in range(7)] + [(f"j{i}", 2) for i in range(0, 7, 2)]
    )
    for i in range(0, 7, 2):
        assert [c.resource_version for c in everything if c.name == f"j{i}"] == [1, 2]


async def test_another_client_on_the_same_state_reads_the_writes_of_the_first(backend):
    writer, reader = await backend.open(), await backend.open()
    cursor = await reader.feed_head([job.Job])
    await writer.create(records.job_record("from-the-writer"))
    changes, cursor = await drain(reader, cursor)
    assert changes == [(job.Job.KIND, "from-the-writer", 1, False)]
    await writer.delete(job.Job, "from-the-writer")
    changes, _ = await drain(reader, cursor)
    assert changes == [(job.Job.KIND, "from-the-writer", 1, True)]


@pytest.fixture
async def sqlite_backend(tmp_path: Path, fake_clock: FakeClock) -> AsyncIterator[Backend]:
    """SQLite alone, for what only SQLite does itself (DynamoDB's TTL and stream ARNs are
    the service's)."""
    opened = Backend("sqlite", fake_clock, path=tmp_path / "state.db", endpoint=None)
    try:
        yield opened
    finally:
        await opened.close_all()


async def test_an_expired_record_removed_by_a_listing_is_a_tombstone_on_sqlite(sqlite_backend):
    """SQLite removes an expired Event itself (DynamoDB's TTL does it some time later, and
    the stream carries that as a REMOVE like any other delete)."""
    backend = sqlite_backend
    store = await backend.open()
    created = await store.create(records.event_record("mnist", last=backend.clock.now))
    cursor = await store.feed_head([event.Event])
    backend.clock.advance(10 * 24 * 3600)
    assert (await store.list(event.Event)).items == []
    changes, _ = await drain(store, cursor)
    assert changes == [(event.Event.KIND, created.name, 1, True)]


# -- bad cursors and limits -------------------------------------------------------------------


@pytest.mark.parametrize("limit", [0, -1, 1001, True])
async def test_a_limit_out_of_range_is_invalid(store, limit):
    cursor = await store.feed_head([job.Job])
    with pytest.raises(errors.InvalidRequest, match="limit"):
        await store.changes(cursor, limit=limit)


async def test_feed_head_needs_known_kinds(store):
    with pytest.raises(errors.InvalidRequest, match="kinds"):
        await store.feed_head([])


@pytest.mark.parametrize(
    "cursor",
    [
        "not base64 json!",
        base64.urlsafe_b64encode(b'{"b": "sqlite"}').decode(),
        base64.urlsafe_b64encode(json.dumps({"b": "x", "k": ["Job"], "p": 0}).encode()).decode(),
        base64.urlsafe_b64encode(
            json.dumps({"b": "sqlite", "k": ["Nope"], "p": 0}).encode()
        ).decode(),
    ],
)
async def test_a_garbled_or_foreign_cursor_is_invalid_not_gone(store, cursor):
    with pytest.raises(errors.InvalidRequest, match="cursor"):
        await store.changes(cursor)


# -- a cursor the feed no longer serves: Gone, and the consumer re-lists ----------------------


class Mirror:
    """The smallest list-then-watch consumer: a copy of one kind by name → (uid, rv)."""

    def __init__(self, store: base.Store, kind: type[meta.Resource]) -> None:
        self.store = store
        self.kind = kind
        self.held: dict[str, tuple[str, int]] = {}
        self.cursor = ""
        self.relists = 0

    async def relist(self) -> None:
        self.cursor = await self.store.feed_head([self.kind])
        listed = await base.list_all(self.store, self.kind)
        self.held = {r.name: (r.metadata.uid, r.metadata.resource_version) for r in listed}
        self.relists += 1

    async def sync(self) -> None:
        while True:
            try:
                page = await self.store.changes(self.cursor)
            except errors.Gone:
                await self.relist()
                continue
            for change in page.changes:
                held = self.held.get(change.name)
                if change.record is None:
                    if held is not None and held[1] <= change.resource_version:
                        del self.held[change.name]
                elif (
                    held is None
                    or held[0] != change.record.metadata.uid
                    or (held[1] < change.resource_version)
                ):
                    self.held[change.name] = (change.record.metadata.uid, change.resource_version)
            self.cursor = page.cursor
            if not page.more:
                return


async def truth(store: base.Store) -> dict[str, tuple[str, int]]:
    return {
        r.name: (r.metadata.uid, r.metadata.resource_version)
        for r in await base.list_all(store, job.Job)
    }


async def made_gone(backend: Backend, store: base.Store) -> base.Store:
    """A client of the same state for which cursors taken so far are too old: on SQLite,
    one keeping only 3 changes; on DynamoDB, a new client after the Job table was deleted
    and made again by init-store, so its stream is a new one (moto keeps every record of
    a stream and cannot turn one off and on again, so this is how a stream is replaced
    here). The record `kept` is written again after that, as a restore would."""
    if backend.name == "sqlite":
        return await sqlite.SqliteStore.open(backend.path, clock=backend.clock, feed_retention=3)
    client = store.client  # type: ignore[attr-defined]
    await asyncio.to_thread(client.delete_table, TableName=store.table(job.Job))  # type: ignore[attr-defined]
    other = await backend.open()
    await other.init_tables()  # type: ignore[attr-defined]
    await other.create(job_at("kept", 0))
    return other


async def test_a_too_old_cursor_is_gone_and_the_consumer_relists_to_the_truth(backend):
    store = await backend.open()
    await store.create(job_at("kept", 0))
    mirror = Mirror(store, job.Job)
    await mirror.relist()
    stale = mirror.cursor
    other = await made_gone(backend, store)
    mirror.store = other
    for i in range(6):  # more than SQLite's 3 (and a tenth) kept: the oldest are dropped
        await other.create(job_at(f"new-{i}", 0))
    await other.delete(job.Job, "kept")

    with pytest.raises(errors.Gone, match="too old"):
        await other.changes(stale)
    await mirror.sync()
    assert mirror.relists == 2
    assert mirror.held == await truth(other)
    await other.create(job_at("after", 0))  # and it follows the feed again from there
    await mirror.sync()
    assert mirror.relists == 2
    assert mirror.held == await truth(other)


async def test_a_cursor_beyond_the_newest_change_is_gone_on_sqlite(sqlite_backend, tmp_path):
    """A cursor from another file (or from before the file was restored) has a sequence
    number this file never reached: Gone, not silently waiting for numbers to catch up.
    (A DynamoDB cursor names its stream's ARN: the replaced-stream case covers it.)"""
    backend = sqlite_backend
    store = await backend.open()
    cursor = await store.feed_head([job.Job])
    for i in range(3):
        await store.create(job_at(f"j{i}", 0))
    _, ahead = await drain(store, cursor)
    fresh = await sqlite.SqliteStore.open(tmp_path / "other.db", clock=backend.clock)
    try:
        with pytest.raises(errors.Gone, match="beyond"):
            await fresh.changes(ahead)
    finally:
        await fresh.close()


# -- a consumer killed mid-stream resumes from its cursor -------------------------------------


def url_of(backend: Backend) -> str:
    if backend.name == "sqlite":
        return f"sqlite:///{backend.path}"
    return f"dynamodb://{backend.prefix}?region=us-east-1&endpoint={backend.endpoint}"


def applied(log: Path) -> Seen:
    """Every change the consumer committed, in order, from its log's complete lines."""
    raw = log.read_bytes()
    lines = raw[: raw.rfind(b"\n") + 1].splitlines()[1:]
    return [tuple(c) for line in lines for c in json.loads(line)["changes"]]


async def test_a_consumer_killed_mid_stream_resumes_without_missing_or_repeating(backend, tmp_path):
    store = await backend.open()
    log = tmp_path / "consumer.log"
    url = url_of(backend)
    written: Seen = []
    first = Child(url, str(log), "4", script=CONSUMER)
    try:
        assert first.read_line() == "head"
        for i in range(12):
            created = await store.create(job_at(f"j{i % 5}-{i}", 0))
            written.append((job.Job.KIND, created.name, 1, False))
            if i % 3 == 0:
                created.status.step = 1
                await store.update(created)
                written.append((job.Job.KIND, created.name, 2, False))
            if i % 4 == 0:
                await store.delete(job.Job, created.name)
                written.append((job.Job.KIND, created.name, written[-1][2], True))
        for _ in range(2):
            first.send("page")
            assert first.read_line() == "ok 4"
        first.send("half")  # reads the third page, half-commits it, and dies there
        assert first.read_line() == "half"
    finally:
        first.kill()
    assert len(applied(log)) == 8

    second = Child(url, str(log), "4", script=CONSUMER)
    try:
        while True:
            second.send("page")
            if second.read_line() == "ok 0":
                break
    finally:
        second.kill()
    # One shard, one kind: the feed's order is the commit order here on both backends.
    assert applied(log) == written
