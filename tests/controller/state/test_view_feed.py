"""The view as an informer over a real SQLite store's change feed, on a fake clock: one full
read, then deltas applied only when newer; a too-old cursor answered by a full read; the
slow resync kept as the safety net (its workings: test_view_resync.py)."""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from api.resources import allocation, pnode
from api.resources import network as net_model
from controller.runtime import clock as clocks
from controller.state import view as view_mod
from store import base, dynamodb, errors, sqlite
from tests.controller.state.test_view import (
    CONFIG,
    allocation_record,
    create_all,
    network_record,
    pnode_record,
)
from tests.support import hooked_store, wait


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[sqlite.SqliteStore]:
    opened = await sqlite.SqliteStore.open(tmp_path / "state.db")
    yield opened
    await opened.close()


@pytest.fixture
def clock() -> clocks.FakeClock:
    return clocks.FakeClock()


@pytest.fixture
def view(store: sqlite.SqliteStore, clock: clocks.FakeClock) -> view_mod.View:
    return view_mod.View(store, clock, config=CONFIG)


class CountingStore:
    """The real store, counting its listings (a full read lists every kind)."""

    def __init__(self, inner: base.Store) -> None:
        self.inner = inner
        self.listed = 0

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)

    async def list(self, kind, **kwargs):
        self.listed += 1
        return await self.inner.list(kind, **kwargs)


async def test_other_writers_reach_the_view_through_the_feed_without_a_full_read(
    store, clock
) -> None:
    counting = CountingStore(store)
    view = view_mod.View(counting, clock, config=CONFIG)  # type: ignore[arg-type]
    await create_all(store, pnode_record("p1"))
    await view.catch_up()  # the first: a full read
    assert sorted(view.pnodes) == ["p1"]
    listed = counting.listed

    created = await create_all(store, pnode_record("p2"), network_record())
    alloc = (await create_all(store, allocation_record("mnist", "input", 0, "p2")))[0]
    moved = alloc.model_copy(deep=True)
    assert isinstance(moved, allocation.Allocation)
    moved.spec.pnode = "p1"
    await store.update(moved)
    await store.delete(pnode.PNode, "p1")
    await view.catch_up()

    assert counting.listed == listed  # no listing: deltas only
    assert sorted(view.pnodes) == ["p2"]
    assert view.networks["mnist"].metadata.uid == created[1].metadata.uid
    assert [a.spec.pnode for a in view.allocations_of("mnist")] == ["p1"]
    assert view.allocations_on("p2") == []  # the move left the old PNode's index
    assert view.feed_changes == 5
    assert view.full_reads == 1
    assert view.refreshed_at == clock.now()


async def test_a_change_older_than_what_the_view_holds_does_not_move_it_back(store, view) -> None:
    await view.refresh()
    (v1,) = await create_all(store, pnode_record("p1"))
    changed = v1.model_copy(deep=True)
    assert isinstance(changed, pnode.PNode)
    changed.status.assignments_version = 7
    v2 = await store.update(changed)
    view.apply_written([v2])  # this replica's own write, ahead of the feed
    seen: list[tuple[int | None, int | None]] = []
    view.subscribe(
        lambda old, new: seen.append(
            (
                None if old is None else old.metadata.resource_version,
                None if new is None else new.metadata.resource_version,
            )
        )
    )
    await view.follow()  # brings rv 1 then rv 2: neither is newer
    assert view.pnodes["p1"].status.assignments_version == 7
    assert seen == []


async def test_a_tombstone_of_an_earlier_life_leaves_the_record_created_again(store, view) -> None:
    await view.refresh()
    (old,) = await create_all(store, network_record())
    await store.delete(net_model.Network, "mnist")
    (again,) = await create_all(store, network_record())
    view.apply_written([again])  # the new life reached this view first (its own write)
    await view.follow()  # old create, old tombstone, new create
    assert view.networks["mnist"].metadata.uid == again.metadata.uid
    assert old.metadata.uid != again.metadata.uid


async def test_a_cursor_the_feed_no_longer_serves_is_answered_by_reading_what_changed(
    tmp_path, clock
) -> None:
    """Gone after the first full read: the view lists versions and reads only the records it
    lacks or holds older, as the resync does, not every record again (a replica that fell
    behind holds most of them already, its own writes above all)."""
    small = hooked_store.HookedStore(
        await sqlite.SqliteStore.open(tmp_path / "state.db", feed_retention=2)
    )
    try:
        view = view_mod.View(small, clock, config=CONFIG)
        await create_all(small, pnode_record("p1"), pnode_record("kept"))
        await view.catch_up()
        stale = view._cursor
        await create_all(small, *(pnode_record(f"n{i}") for i in range(5)))
        await small.delete(pnode.PNode, "p1")
        with pytest.raises(errors.Gone):
            await small.changes(stale or "")
        small.gets.clear()
        await view.catch_up()
        assert view.relists_after_gone == 1
        assert view.full_reads == 1
        assert sorted(view.pnodes) == ["kept", *(f"n{i}" for i in range(5))]
        assert sorted(small.gets) == [("PNode", f"n{i}") for i in range(5)]  # not "kept"
        assert view.resync_reads == 5
        await create_all(small, pnode_record("later"))
        await view.catch_up()  # and it follows the feed again from the new cursor
        assert "later" in view.pnodes
        assert (view.full_reads, view.relists_after_gone) == (1, 1)
    finally:
        await small.close()


async def test_the_resync_runs_every_view_resync_and_not_between(store, clock) -> None:
    config = dataclasses.replace(CONFIG, view_resync=60.0)
    view = view_mod.View(store, clock, config=config)
    await view.catch_up()
    assert (view.full_reads, view.resyncs) == (1, 0)
    await clock.advance(59.0)
    await view.catch_up()
    assert (view.full_reads, view.resyncs) == (1, 0)
    await clock.advance(1.0)
    await view.catch_up()
    assert (view.full_reads, view.resyncs) == (1, 1)  # the resync, not a full read
    await clock.advance(60.0)
    await view.catch_up()
    assert (view.full_reads, view.resyncs) == (1, 2)


async def test_run_follows_the_feed_every_view_refresh(store, clock) -> None:
    view = view_mod.View(store, clock, config=CONFIG)

    async def step_then(check: Callable[[], bool]) -> bool:
        # The loop's store calls run on a thread: move the clock on until it has caught up.
        await clock.advance(CONFIG.view_refresh)
        return check()

    view.start()
    try:
        await wait.until(
            lambda: step_then(lambda: view.full_reads == 1), within=10.0, what="first read"
        )
        await create_all(store, pnode_record("p1"))
        await wait.until(
            lambda: step_then(lambda: "p1" in view.pnodes), within=10.0, what="p1 from the feed"
        )
        assert view.full_reads == 1
        assert view.feed_changes == 1
    finally:
        await view.stop()


async def test_on_dynamodb_another_replicas_writes_reach_the_view_through_the_streams(
    moto_endpoint, clock
) -> None:
    """The same informer over DynamoDB Streams (moto over HTTP): one replica's view follows
    what another client writes, deletes included, with no full read after the first."""
    prefix = f"v{uuid.uuid4().hex[:12]}"
    mine = await dynamodb.DynamoStore.open(
        prefix=prefix, region="us-east-1", endpoint=moto_endpoint
    )
    other = await dynamodb.DynamoStore.open(
        prefix=prefix, region="us-east-1", endpoint=moto_endpoint
    )
    try:
        await mine.init_tables()
        await create_all(other, pnode_record("p1"))
        view = view_mod.View(mine, clock, config=CONFIG)
        await view.catch_up()
        assert sorted(view.pnodes) == ["p1"]
        await create_all(other, pnode_record("p2"), network_record())
        await create_all(other, allocation_record("mnist", "input", 0, "p2"))
        await other.delete(pnode.PNode, "p1")
        await view.catch_up()
        assert sorted(view.pnodes) == ["p2"]
        assert [a.spec.pnode for a in view.allocations_of("mnist")] == ["p2"]
        assert view.full_reads == 1
        assert view.feed_changes == 4
    finally:
        await mine.close()
        await other.close()
