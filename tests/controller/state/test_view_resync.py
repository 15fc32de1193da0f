"""The view's resync (`View.resync`, every `view_resync`) on a fake clock, over a real store
whose change feed is made to miss chosen records (`HookedStore.hidden`): it lists every
record's uid and version, reads only what the cache lacks or holds older, forgets what the
store no longer has, and leaves alone what has not moved and what is newer in the cache."""

from __future__ import annotations

import uuid

from api.resources import allocation, meta, pnode
from api.resources import network as net_model
from controller.runtime import clock as clocks
from controller.state import view as view_mod
from store import base, dynamodb
from tests.controller.state.test_view import (
    CONFIG,
    allocation_record,
    create_all,
    network_record,
    pnode_record,
)
from tests.support import hooked_store

Seen = list[tuple[str, int | None, int | None]]


def recorded(view: view_mod.View) -> Seen:
    """What subscribers are told from now on: (name, old version, new version)."""
    seen: Seen = []

    def version(record: meta.Resource | None) -> int | None:
        return None if record is None else record.metadata.resource_version

    def told(old: meta.Resource | None, new: meta.Resource | None) -> None:
        either = old if old is not None else new
        assert either is not None
        seen.append((either.name, version(old), version(new)))

    view.subscribe(told)
    return seen


async def bumped(store: base.Store, kind: type[meta.Resource], name: str) -> meta.Resource:
    record = await store.get(kind, name)
    if isinstance(record, pnode.PNode):
        record.status.assignments_version += 1
    return await store.update(record)


async def resync_due(view: view_mod.View, clock: clocks.FakeClock) -> None:
    """One `catch_up` with `view_resync` passed since the last full read or resync."""
    await clock.advance(CONFIG.view_resync)
    await view.catch_up()


async def test_writes_the_feed_missed_are_read_and_nothing_else(store, view, clock) -> None:
    await create_all(store, *(pnode_record(f"p{i}") for i in range(1, 6)), network_record())
    await view.catch_up()  # the first: a full read
    store.hidden = {("PNode", "p2"), ("PNode", "p6"), ("Network", "mnist")}
    p2 = await bumped(store, pnode.PNode, "p2")
    (p6,) = await create_all(store, pnode_record("p6"))
    await store.delete(net_model.Network, "mnist")
    (mnist,) = await create_all(store, network_record())  # another life: a new uid, rv 1
    visible = await bumped(store, pnode.PNode, "p4")  # this one the feed brings
    await view.catch_up()
    assert view.pnodes["p2"].metadata.resource_version == 1  # missed
    assert "p6" not in view.pnodes
    assert view.pnodes["p4"].metadata.resource_version == visible.metadata.resource_version
    store.gets.clear()
    seen = recorded(view)

    await resync_due(view, clock)

    assert store.gets == [("PNode", "p2"), ("PNode", "p6"), ("Network", "mnist")]
    assert view.pnodes["p2"].metadata.resource_version == p2.metadata.resource_version
    assert view.pnodes["p6"].metadata.uid == p6.metadata.uid
    assert view.networks["mnist"].metadata.uid == mnist.metadata.uid
    assert sorted(seen) == [("mnist", 1, 1), ("p2", 1, 2), ("p6", None, 1)]
    assert (view.resyncs, view.resync_reads, view.full_reads) == (1, 3, 1)

    store.gets.clear()
    await resync_due(view, clock)  # nothing moved: a listing, no read
    assert store.gets == []
    assert view.resync_reads == 3


async def test_what_the_feed_holds_at_the_resync_comes_from_the_feed_not_a_read(
    store, view, clock
) -> None:
    await create_all(store, pnode_record("p1"), pnode_record("p2"))
    await view.catch_up()
    bumped_p1 = await bumped(store, pnode.PNode, "p1")  # not yet followed when the resync
    await store.delete(pnode.PNode, "p2")  # falls due
    store.gets.clear()
    await resync_due(view, clock)
    assert view.pnodes["p1"].metadata.resource_version == bumped_p1.metadata.resource_version
    assert "p2" not in view.pnodes
    assert store.gets == []
    assert (view.feed_changes, view.resync_reads, view.resyncs) == (2, 0, 1)


async def test_records_deleted_behind_the_feed_are_forgotten_with_their_indexes(
    store, view, clock
) -> None:
    await create_all(
        store,
        pnode_record("p1"),
        pnode_record("p2"),
        network_record(),
        allocation_record("mnist", "input", 0, "p1"),
    )
    await view.catch_up()
    assert [a.name for a in view.allocations_on("p1")] == ["mnist.input.0"]
    store.hidden = {("PNode", "p2"), ("Allocation", "mnist.input.0")}
    await store.delete(pnode.PNode, "p2")
    await store.delete(allocation.Allocation, "mnist.input.0")
    await view.catch_up()
    assert "p2" in view.pnodes
    seen = recorded(view)
    store.gets.clear()

    await resync_due(view, clock)

    assert sorted(view.pnodes) == ["p1"]
    assert view.allocations == {}
    assert view.allocations_on("p1") == []
    assert view.allocations_of("mnist") == []
    assert sorted(seen) == [("mnist.input.0", 1, None), ("p2", 1, None)]
    assert store.gets == []  # a deletion needs no read


async def test_a_record_newer_in_the_cache_than_the_listing_is_neither_read_nor_moved_back(
    store, view, clock
) -> None:
    await create_all(store, pnode_record("p1"))
    await view.catch_up()
    store.hidden = {("PNode", "p1")}
    await bumped(store, pnode.PNode, "p1")  # rv 2: missed by the feed

    async def own_write_meanwhile() -> None:
        # This replica writes rv 3 after the resync listed rv 2, before it compares.
        view.apply_written([await bumped(store.inner, pnode.PNode, "p1")])  # no get counted

    store.after_list[pnode.PNode.KIND] = own_write_meanwhile
    store.gets.clear()
    await resync_due(view, clock)
    assert view.pnodes["p1"].metadata.resource_version == 3
    assert ("PNode", "p1") not in store.gets

    seen = recorded(view)
    await resync_due(view, clock)  # the listing now says 3 as well
    assert view.pnodes["p1"].metadata.resource_version == 3
    assert seen == []


async def test_a_resync_that_began_before_a_local_create_does_not_forget_it(
    store, view, clock
) -> None:
    await create_all(store, pnode_record("p1"))
    await view.catch_up()

    async def create_meanwhile() -> None:
        # This replica creates p2 after the resync listed PNodes without it.
        view.apply_written(await create_all(store, pnode_record("p2")))

    store.after_list[pnode.PNode.KIND] = create_meanwhile
    await resync_due(view, clock)
    assert sorted(view.pnodes) == ["p1", "p2"], "a resync older than the write undid it"
    await resync_due(view, clock)
    assert sorted(view.pnodes) == ["p1", "p2"]


async def test_an_allocation_the_feed_missed_unsettles_its_pnode_until_the_resync(
    store, view, clock
) -> None:
    """The PNode's digest counts an allocation the feed did not bring: nothing is shown
    until the resync reads it, then the whole set at the PNode's version."""
    await create_all(store, pnode_record("p1"), network_record())
    await view.catch_up()
    store.hidden = {("Allocation", "mnist.input.0")}
    (placed,) = await create_all(store, allocation_record("mnist", "input", 0, "p1"))
    assert isinstance(placed, allocation.Allocation)
    node = await store.get(pnode.PNode, "p1")
    node.status.assignments_version = 1
    node.status.assignments_digest = allocation.digest_of([placed])
    await store.update(node)
    await view.catch_up()
    assert view.assignment_set("p1") == view_mod.UNSETTLED

    await resync_due(view, clock)
    shown = view.assignment_set("p1")
    assert shown is not None
    assert shown.settled
    assert [a.allocation.name for a in shown.assignments] == ["mnist.input.0"]
    assert shown.version == view_mod.GENERATION_SPAN


async def test_past_a_quarter_of_a_kind_stale_the_resync_lists_it_instead(
    store, view, clock
) -> None:
    count = view_mod.RESYNC_GETS_MIN + 6
    await view.catch_up()
    names = [f"n{i:03d}" for i in range(count)]
    store.hidden = {("PNode", name) for name in names}
    for start in range(0, count, 50):
        await store.transact([base.Create(pnode_record(n)) for n in names[start : start + 50]])
    await resync_due(view, clock)
    assert sorted(view.pnodes) == names
    assert store.gets == []
    assert view.resync_reads == count


async def test_on_dynamodb_the_resync_repairs_what_the_streams_missed(
    moto_endpoint, clock
) -> None:
    """The same over DynamoDB (moto over HTTP): the projected Scan, then consistent gets."""
    inner = await dynamodb.DynamoStore.open(
        prefix=f"r{uuid.uuid4().hex[:12]}", region="us-east-1", endpoint=moto_endpoint
    )
    store = hooked_store.HookedStore(inner)
    try:
        await inner.init_tables()
        await create_all(store, pnode_record("p1"), pnode_record("p2"), pnode_record("p3"))
        view = view_mod.View(store, clock, config=CONFIG)
        await view.catch_up()
        store.hidden = {("PNode", "p1"), ("PNode", "p2")}
        p1 = await bumped(store, pnode.PNode, "p1")
        await store.delete(pnode.PNode, "p2")
        await view.catch_up()
        assert view.pnodes["p1"].metadata.resource_version == 1
        assert "p2" in view.pnodes
        store.gets.clear()
        await resync_due(view, clock)
        assert sorted(view.pnodes) == ["p1", "p3"]
        assert view.pnodes["p1"].metadata.resource_version == p1.metadata.resource_version
        assert store.gets == [("PNode", "p1")]
    finally:
        await store.close()
