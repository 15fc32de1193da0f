"""The network loop planning against an informer's PNodes (issue 13) instead of listing
every PNode from the store each pass, against a real SQLite store.

The informer here is a dict of PNodes that the test keeps as the server's view would: the
loop's own writes arrive through `on_written`, others' only when the test re-reads the store
(a view's feed, late on purpose). Every invariant is read back from the store.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from api.resources import allocation, meta, network, pnode
from controller.runtime import clock as clock_mod
from reconcilers import base as reconcile_base
from reconcilers import network as network_loop
from reconcilers import network_actions, network_apply
from store import base, sqlite
from tests.reconcilers import helpers
from tests.reconcilers import test_network_reconciler as loop_tests

Allocation = allocation.Allocation
PNode = pnode.PNode
CONFIG = network_actions.PlanConfig(unschedulable_retry=5.0)


class Informer:
    """PNodes by name: written through by the loop, re-read from the store on `sync`; tells
    `changes` of every PNode it changes, as the server's view tells the loop."""

    def __init__(self, store: base.Store) -> None:
        self.store = store
        self.pnodes: dict[str, PNode] = {}
        self.changes = network_loop.ChangedPNodes()

    async def sync(self) -> None:
        listed = {p.metadata.name: p for p in await base.list_all(self.store, PNode)}
        for name in self.pnodes.keys() | listed.keys():
            old, new = self.pnodes.get(name), listed.get(name)
            if old is None or new is None or old.metadata != new.metadata:
                self.changes.note(old, new)
        self.pnodes = listed

    def written(self, records: list[meta.Resource]) -> None:
        for record in records:
            if isinstance(record, PNode):
                self.changes.note(self.pnodes.get(record.metadata.name), record)
                self.pnodes[record.metadata.name] = record


class CountingStore:
    """The real store, counting the PNode lists and reads the loop makes."""

    def __init__(self, inner: base.Store) -> None:
        self.inner = inner
        self.pnode_lists = 0
        self.pnode_gets: list[str] = []

    async def get(self, kind, name):
        if kind is PNode:
            self.pnode_gets.append(name)
        return await self.inner.get(kind, name)

    async def list(self, kind, **kwargs):
        if kind is PNode:
            self.pnode_lists += 1
        return await self.inner.list(kind, **kwargs)

    async def update(self, obj):
        return await self.inner.update(obj)

    async def delete(self, kind, name, **kwargs):
        return await self.inner.delete(kind, name, **kwargs)

    async def transact(self, ops):
        return await self.inner.transact(ops)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[base.Store]:
    db = await sqlite.SqliteStore.open(tmp_path / "state.db")
    yield db
    await db.close()


def informed(store: base.Store, informer: Informer) -> network_loop.NetworkReconciler:
    return network_loop.NetworkReconciler(
        store,
        clock_mod.FakeClock(),
        config=CONFIG,
        on_written=informer.written,
        pnodes=lambda: informer.pnodes,
        pnode_changes=informer.changes,
    )


async def test_networks_are_placed_from_the_informer_without_listing_pnodes(store) -> None:
    await loop_tests.add_pnodes(store, 4)
    for name in ("a", "b"):
        await loop_tests.add_network(store, loop_tests.VNODES, name=name)
    informer = Informer(store)
    await informer.sync()
    counting = CountingStore(store)
    loop = informed(counting, informer)  # type: ignore[arg-type]
    # The second network is planned on the capacity the first charged, written through.
    for name in ("a", "b"):
        assert await loop.reconcile(name) == reconcile_base.Result()
    assert counting.pnode_lists == 0
    assert counting.pnode_gets == []
    assert len(await loop_tests.check_invariants(store)) == 12
    assert informer.pnodes == {p.metadata.name: p for p in await base.list_all(store, PNode)}


async def test_a_stale_informer_only_conflicts_and_the_pass_is_planned_again(store) -> None:
    await loop_tests.add_pnodes(store, 1, cpu="2")
    await loop_tests.add_network(store, [helpers.vnode("v", cpu="1500m")])
    informer = Informer(store)
    await informer.sync()
    # Another writer takes most of the PNode; the informer has not seen it yet.
    await loop_tests.edit(store, PNode, "p0", lambda p: setattr(p.status.allocated, "cpu", 1000))
    loop = informed(store, informer)
    before = await loop_tests.versions(store)
    assert await loop.reconcile("net") == reconcile_base.Result(requeue=True)
    assert await loop_tests.versions(store) == before  # nothing written from the stale plan
    await informer.sync()  # the feed brings the other write
    assert await loop.reconcile("net") == reconcile_base.Result(requeue_after=5.0)
    assert await base.list_all(store, Allocation) == []  # 1500m no longer fits in 1000m


async def test_a_pnode_the_informer_has_not_brought_is_read_not_taken_for_gone(store) -> None:
    await loop_tests.add_pnodes(store, 2)
    await loop_tests.add_network(store, [helpers.vnode("v")])
    informer = Informer(store)
    await informer.sync()
    loop = informed(store, informer)
    assert await loop.reconcile("net") == reconcile_base.Result()
    (placed,) = await base.list_all(store, Allocation)
    # A replica whose informer lags: it has never seen the PNode holding the slot.
    lagging = Informer(store)
    lagging.pnodes = {n: p for n, p in informer.pnodes.items() if n != placed.spec.pnode}
    counting = CountingStore(store)
    before = await loop_tests.versions(store)
    other = informed(counting, lagging)  # type: ignore[arg-type]
    assert await other.reconcile("net") == reconcile_base.Result()
    assert counting.pnode_gets == [placed.spec.pnode]
    assert await loop_tests.versions(store) == before  # not migrated: nothing written
    (still,) = await base.list_all(store, Allocation)
    assert (still.spec.pnode, still.spec.epoch) == (placed.spec.pnode, 1)


async def test_two_replicas_with_lagging_informers_converge_without_over_commit(
    store, tmp_path
) -> None:
    other = await sqlite.SqliteStore.open(tmp_path / "state.db")
    try:
        await loop_tests.add_pnodes(store, 6, cpu="3", memory="4Gi")
        vnodes = [helpers.vnode(f"v{i}", replicas=2, inputs=[f"v{i - 1}"] if i else [])
                  for i in range(8)]  # fmt: skip
        await loop_tests.add_network(store, vnodes)
        informers = [Informer(store), Informer(other)]
        loops = [informed(store, informers[0]), informed(other, informers[1])]
        for round_ in range(30):
            if round_ % 3 == 0:  # the feeds bring others' writes only now and then
                for informer in informers:
                    await informer.sync()
            results = await asyncio.gather(*(loop.reconcile("net") for loop in loops))
            await loop_tests.check_invariants(store)
            if all(r == reconcile_base.Result() for r in results):
                break
        else:
            pytest.fail(f"no convergence after 30 rounds: {results}")
        assert len(await loop_tests.check_invariants(store)) == 16
    finally:
        await other.close()


def test_charged_leaves_the_record_it_was_given_as_it_was() -> None:
    node = helpers.pnode_record(
        "p0", cpu="4", memory="8Gi", accelerators=[{"type": "a100", "count": 4}]
    )
    before = node.model_dump()
    request = {"cpu": "500m", "memory": "512Mi", "accelerator": {"type": "a100", "count": 1}}
    resources = [network.ResourceRequest.model_validate(request)] * 3
    after = network_apply.charged(node, add=resources, bumps=3)
    assert node.model_dump() == before  # the informer's record is shared, never changed
    one_by_one = node
    for each in resources:
        one_by_one = network_apply.charged(one_by_one, add=each)
    assert after.status.allocated == one_by_one.status.allocated
    assert after.status.allocated.cpu == 3 * resources[0].cpu
    assert after.status.allocated.accelerator_count("a100") == 3
    assert after.status.assignments_version == one_by_one.status.assignments_version == 3
