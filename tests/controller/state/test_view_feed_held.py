"""The view skips, without parsing, a feed change of a record it already holds at that
version or newer (its own writes, applied through), and still applies everything else:
newer versions, deletions, and another replica's writes, another life of a name included.
On both backends (SQLite; DynamoDB Streams over HTTP from the moto server), through a
`HookedStore` that keeps every page the store returned, so a test sees which changes were
parsed (`base.Change.parsed`) rather than timing anything."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from api.resources import allocation, meta, pnode
from api.resources import network as net_model
from controller.runtime import clock as clocks
from controller.state import view as view_mod
from store import base, dynamodb, sqlite
from tests.controller.state.test_view import (
    CONFIG,
    allocation_record,
    create_all,
    network_record,
    pnode_record,
)
from tests.support import hooked_store

Told = list[tuple[str, int | None, int | None]]


@pytest.fixture(params=["sqlite", "dynamodb"])
async def store(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[hooked_store.HookedStore]:
    inner: base.Store
    if request.param == "sqlite":
        inner = await sqlite.SqliteStore.open(tmp_path / "state.db")
    else:
        endpoint = request.getfixturevalue("moto_endpoint")
        dynamo = await dynamodb.DynamoStore.open(
            prefix=f"h{uuid.uuid4().hex[:12]}", region="us-east-1", endpoint=endpoint
        )
        await dynamo.init_tables()
        inner = dynamo
    hooked = hooked_store.HookedStore(inner)
    yield hooked
    await hooked.close()


@pytest.fixture
def clock() -> clocks.FakeClock:
    return clocks.FakeClock()


def told(view: view_mod.View) -> Told:
    """What subscribers are told from now on: (name, old version, new version)."""
    seen: Told = []

    def version(record: meta.Resource | None) -> int | None:
        return None if record is None else record.metadata.resource_version

    def note(old: meta.Resource | None, new: meta.Resource | None) -> None:
        either = old if old is not None else new
        assert either is not None
        seen.append((either.name, version(old), version(new)))

    view.subscribe(note)
    return seen


def fed(store: hooked_store.HookedStore) -> list[base.Change]:
    """Every change the store's feed returned so far, as the view received it."""
    return [change for page in store.pages for change in page.changes]


async def written_through(
    view: view_mod.View, store: base.Store, *records: meta.Resource
) -> list[meta.Resource]:
    """Create `records` as this replica does: write, then apply to its own view."""
    made = await create_all(store, *records)
    view.apply_written(made)
    return made


async def test_the_views_own_writes_come_back_through_the_feed_and_are_not_parsed(
    store, clock
) -> None:
    view = view_mod.View(store, clock, config=CONFIG)
    await view.catch_up()  # the first: a full read
    p1, _, _ = await written_through(
        view,
        store,
        pnode_record("p1"),
        network_record(),
        allocation_record("mnist", "input", 0, "p1"),
    )
    assert isinstance(p1, pnode.PNode)
    changed = p1.model_copy(deep=True)
    changed.status.assignments_version = 3
    p1_v2, out = await store.transact(
        [base.Update(changed), base.Create(allocation_record("mnist", "out", 0, "p1"))]
    )
    view.apply_written([p1_v2, out])
    seen = told(view)
    store.pages.clear()

    await view.follow()

    changes = fed(store)
    assert sorted((c.kind, c.name, c.resource_version) for c in changes) == [
        ("Allocation", "mnist.input.0", 1),
        ("Allocation", "mnist.out.0", 1),
        ("Network", "mnist", 1),
        ("PNode", "p1", 1),  # older than the held rv 2: left as well
        ("PNode", "p1", 2),
    ]
    assert [c for c in changes if c.parsed] == []  # not by the store, not by the view
    assert (view.feed_changes, view.feed_held) == (5, 5)
    assert seen == []  # nothing moved, so nobody was told
    assert view.pnodes["p1"] is p1_v2  # the record written through, as it was


async def test_a_newer_version_and_a_deletion_from_another_writer_still_apply(store, clock) -> None:
    view = view_mod.View(store, clock, config=CONFIG)
    await view.catch_up()
    p1, p2, _, alloc = await written_through(
        view,
        store,
        pnode_record("p1"),
        pnode_record("p2"),
        network_record(),
        allocation_record("mnist", "input", 0, "p2"),
    )
    await view.follow()  # its own writes, held
    store.pages.clear()
    seen = told(view)

    # Another writer (not through this view): p1 at a newer version, the allocation moved
    # to p1 (a newer version), p2 deleted.
    newer = p1.model_copy(deep=True)
    assert isinstance(newer, pnode.PNode)
    newer.status.assignments_version = 9
    p1_v2 = await store.update(newer)
    moved = alloc.model_copy(deep=True)
    assert isinstance(moved, allocation.Allocation)
    moved.spec.pnode = "p1"
    await store.update(moved)
    await store.delete(pnode.PNode, "p2", resource_version=p2.metadata.resource_version)
    await view.follow()

    assert view.pnodes["p1"].status.assignments_version == 9
    assert view.pnodes["p1"].metadata.resource_version == p1_v2.metadata.resource_version
    assert "p2" not in view.pnodes
    assert [a.spec.pnode for a in view.allocations_of("mnist")] == ["p1"]
    assert view.allocations_on("p2") == []
    assert sorted(seen) == [("mnist.input.0", 1, 2), ("p1", 1, 2), ("p2", 1, None)]
    written = [c for c in fed(store) if not c.deleted]
    assert len(written) == 2
    assert all(c.parsed for c in written)  # applied, so parsed
    assert view.feed_held == 4  # only the first follow's own writes


async def test_another_replicas_write_of_a_name_this_replica_wrote_applies(store, clock) -> None:
    """Two replicas, each with its own view, on one store. Each holds what it wrote; what
    the other wrote under the same names, at a newer version or as another life of the name
    (a new uid, whose version restarts at 1, no newer than the one held), reaches it."""
    mine = view_mod.View(store, clock, config=CONFIG)
    other = view_mod.View(store, clock, config=CONFIG)
    await mine.catch_up()
    await other.catch_up()
    _, mnist = await written_through(mine, store, pnode_record("p1"), network_record())
    await mine.follow()  # its own, held
    await other.follow()  # the other replica learns of them from the feed

    newer = other.pnodes["p1"].model_copy(deep=True)
    newer.status.assignments_version = 4
    p1_v2 = await store.update(newer)
    other.apply_written([p1_v2])
    await store.delete(net_model.Network, "mnist", resource_version=1)
    other.apply_deleted(net_model.Network, "mnist")
    (again,) = await written_through(other, store, network_record())
    assert again.metadata.resource_version == mnist.metadata.resource_version  # both 1
    store.pages.clear()
    await mine.follow()

    assert mine.pnodes["p1"].metadata.resource_version == p1_v2.metadata.resource_version
    assert mine.pnodes["p1"].status.assignments_version == 4
    assert mine.networks["mnist"].metadata.uid == again.metadata.uid != mnist.metadata.uid
    assert all(c.parsed for c in fed(store))  # none of them was this replica's

    # And the other replica's view holds its own writes: following them parses none.
    store.pages.clear()
    held = other.feed_held
    await other.follow()
    assert [c for c in fed(store) if c.parsed and not c.deleted] == []
    assert other.feed_held - held == 2  # p1 rv 2 and mnist's new life
    assert other.networks["mnist"].metadata.uid == again.metadata.uid


async def test_another_life_of_a_name_applies_even_when_the_feed_missed_its_deletion(
    store, clock
) -> None:
    """The key is (kind, name, uid, resource_version), not the version alone: a record
    created again elsewhere restarts at version 1, which a version-only check would call
    held by a view still holding the old life (here, one whose feed lost the tombstone)."""
    view = view_mod.View(store, clock, config=CONFIG)
    await view.catch_up()
    (mnist,) = await written_through(view, store, network_record())
    await view.follow()
    store.hidden_deletions = {("Network", "mnist")}
    await store.delete(net_model.Network, "mnist", resource_version=1)
    (again,) = await create_all(store, network_record())  # another replica's create
    assert again.metadata.resource_version == mnist.metadata.resource_version
    await view.follow()
    assert view.networks["mnist"].metadata.uid == again.metadata.uid
