"""Placements written in groups: as many per transaction as fit, all or nothing.

Against a real SQLite store, counting the transactions it is asked for (a thin wrapper that
forwards every call), and reading the invariants back from the store.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pytest

from api.resources import meta, network, pnode
from controller.runtime import clock as clock_mod
from reconcilers import base as reconcile_base
from reconcilers import network as network_loop
from reconcilers import network_actions, network_apply
from store import base, errors, sqlite
from tests.reconcilers import helpers
from tests.reconcilers import test_network_reconciler as loop_tests


class Counting:
    """The real store, with a count of transactions and of the ops in each."""

    def __init__(self, inner: sqlite.SqliteStore) -> None:
        self.inner = inner
        self.transactions: list[int] = []

    def __getattr__(self, name: str):
        return getattr(self.inner, name)

    async def transact(self, ops: Sequence[base.Op]) -> list[meta.Resource | None]:
        self.transactions.append(len(ops))
        return await self.inner.transact(ops)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Counting]:
    db = await sqlite.SqliteStore.open(tmp_path / "state.db")
    yield Counting(db)
    await db.close()


def place(slot: int, pnode_name: str) -> network_actions.Place:
    return network_actions.Place(
        network="net",
        slot=f"net.v{slot}.0",
        vnode=f"v{slot}",
        replica=0,
        pnode=pnode_name,
        epoch=1,
        pnode_incarnation=1,
        vnode_hash="h",
        resources=network.ResourceRequest.model_validate({"cpu": "100m", "memory": "1Mi"}),
    )


def test_grouped_keeps_order_and_joins_only_consecutive_places() -> None:
    alloc = helpers.allocation_record(helpers.network_record([helpers.vnode("a")]), "a", 0, "p0")
    stop = network_actions.Stop(alloc, "x")
    p1, p2, p3 = place(1, "p0"), place(2, "p1"), place(3, "p0")
    assert network_apply.grouped([stop, p1, p2, stop, p3]) == [stop, (p1, p2), stop, (p3,)]
    assert network_apply.grouped([]) == []


@pytest.mark.parametrize(("places", "pnodes"), [(1, 1), (98, 1), (250, 3), (300, 200)])
def test_chunks_fit_a_transaction_and_lose_nothing(places: int, pnodes: int) -> None:
    actions = [place(i, f"p{i % pnodes}") for i in range(places)]
    budget = base.MAX_TRANSACTION_OPS - 1  # one op is the network's Check
    chunks = network_apply._chunks(actions, budget=budget)
    assert [p for chunk in chunks for p in chunk] == actions
    for chunk in chunks:
        assert len(chunk) + len({p.pnode for p in chunk}) <= budget
    if pnodes == 1:  # every chunk but the last is full
        assert all(len(c) + 1 == budget for c in chunks[:-1])


async def test_a_big_network_is_placed_in_few_transactions(store: Counting) -> None:
    await loop_tests.add_pnodes(store.inner, 3, cpu="64", memory="64Gi")
    vnodes = [helpers.vnode(f"v{i}", cpu="100m", memory="64Mi") for i in range(120)]
    await loop_tests.add_network(store.inner, vnodes)
    loop = network_loop.NetworkReconciler(store, clock_mod.FakeClock())
    assert await loop.reconcile("net") == reconcile_base.Result()
    allocations = await loop_tests.check_invariants(store.inner)
    assert len(allocations) == 120
    # 120 placements on 3 PNodes: two transactions (96 + 24), then the status update.
    assert store.transactions == [100, 28]
    assert all(ops <= base.MAX_TRANSACTION_OPS for ops in store.transactions)
    for node in await base.list_all(store.inner, pnode.PNode):
        held = sum(1 for a in allocations if a.spec.pnode == node.name)
        assert node.status.assignments_version == held  # one bump per placement, as before


async def test_a_group_that_conflicts_writes_nothing(store: Counting) -> None:
    nodes = await loop_tests.add_pnodes(store.inner, 2)
    net = await loop_tests.add_network(store.inner, [helpers.vnode("a")])
    stale = nodes[1]
    await loop_tests.edit(store.inner, pnode.PNode, stale.name, lambda p: None)  # rv moves on
    applier = network_apply.Applier(store, net, nodes, None, None)
    with pytest.raises(errors.Conflict):
        await applier.apply((place(1, nodes[0].name), place(2, stale.name)))
    assert await base.list_all(store.inner, network_loop.Allocation) == []
    fresh = await store.inner.get(pnode.PNode, nodes[0].name)
    assert fresh.status.allocated.cpu == 0
