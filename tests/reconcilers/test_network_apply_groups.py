"""Placements and migrations written in groups: as many per transaction as fit, all or
nothing.

Against a real SQLite store (and, for a lost PNode's migrations, DynamoDB behind a moto
server too: a DynamoDB transaction refuses two ops on one item), counting the transactions
it is asked for (a thin wrapper that forwards every call), and reading the invariants back
from the store.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pytest

from api.resources import allocation, meta, network, pnode
from controller.runtime import clock as clock_mod
from reconcilers import base as reconcile_base
from reconcilers import network as network_loop
from reconcilers import network_actions, network_apply
from store import base, dynamodb, errors, sqlite
from tests.reconcilers import helpers
from tests.reconcilers import test_network_reconciler as loop_tests


class Counting:
    """The real store, with a count of transactions and of the ops in each."""

    def __init__(self, inner: base.Store) -> None:
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


@pytest.fixture(params=["sqlite", pytest.param("dynamodb", marks=pytest.mark.slow)])
async def either_store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Counting]:
    """The SQLite store, or DynamoDB tables of their own on the session's moto server."""
    inner: base.Store
    if request.param == "sqlite":
        inner = await sqlite.SqliteStore.open(tmp_path / "state.db")
    else:
        endpoint = request.getfixturevalue("moto_endpoint")
        dyn = await dynamodb.DynamoStore.open(
            prefix=f"t{uuid.uuid4().hex[:12]}", region="us-east-1", endpoint=endpoint
        )
        await dyn.init_tables()
        inner = dyn
    yield Counting(inner)
    await inner.close()


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
    chunks = network_apply._chunks(actions, budget=budget, pnodes=network_apply._targets)
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


# -- migrations ------------------------------------------------------------------------------


def migrate(slot: int, from_pnode: str, to_pnode: str) -> network_actions.Migrate:
    net = helpers.network_record([helpers.vnode(f"v{slot}")])
    was = helpers.allocation_record(net, f"v{slot}", 0, from_pnode)
    return network_actions.Migrate(
        allocation=was,
        to_pnode=to_pnode,
        new_epoch=was.spec.epoch + 1,
        reason="pnode lost",
        pnode_incarnation=1,
        vnode_hash="h",
        resources=was.spec.resources,
    )


def test_grouped_joins_consecutive_migrations_apart_from_placements() -> None:
    alloc = helpers.allocation_record(helpers.network_record([helpers.vnode("a")]), "a", 0, "p0")
    stop = network_actions.Stop(alloc, "x")
    m1, m2, m3 = migrate(1, "p0", "p1"), migrate(2, "p0", "p2"), migrate(3, "p1", "p2")
    p1, p2 = place(4, "p1"), place(5, "p2")
    assert network_apply.grouped([stop, m1, m2, p1, p2, m3, stop]) == [
        stop, (m1, m2), (p1, p2), (m3,), stop,
    ]  # fmt: skip


@pytest.mark.parametrize(("moves", "pnodes"), [(1, 2), (60, 2), (97, 3), (250, 200)])
def test_migration_chunks_count_both_pnodes_and_lose_nothing(moves: int, pnodes: int) -> None:
    actions = [migrate(i, f"p{i % pnodes}", f"p{(i + 1) % pnodes}") for i in range(moves)]
    budget = base.MAX_TRANSACTION_OPS - 1
    chunks = network_apply._chunks(actions, budget=budget, pnodes=network_apply._ends)
    assert [m for chunk in chunks for m in chunk] == actions
    for chunk in chunks:
        ends = {m.to_pnode for m in chunk} | {m.allocation.spec.pnode for m in chunk}
        assert len(chunk) + len(ends) <= budget
    if pnodes <= 3:  # few PNodes: every chunk but the last is full
        assert all(len(c) + pnodes == budget for c in chunks[:-1])


async def with_digests(store: base.Store) -> None:
    """Start every PNode's assignments digest from the allocations it holds, so the test
    can check that migrations keep it exact."""
    held = await base.list_all(store, network_loop.Allocation)
    for node in await base.list_all(store, pnode.PNode):
        mine = [a for a in held if a.spec.pnode == node.name]
        digest = allocation.digest_of(mine)
        await loop_tests.edit(
            store, pnode.PNode, node.name,
            lambda p, d=digest: setattr(p.status, "assignments_digest", d),
        )  # fmt: skip


async def check_digests(store: base.Store) -> None:
    held = await base.list_all(store, network_loop.Allocation)
    for node in await base.list_all(store, pnode.PNode):
        mine = [a for a in held if a.spec.pnode == node.name]
        assert node.status.assignments_digest == allocation.digest_of(mine), node.name


async def placed_then_lost(store: Counting, vnodes: int) -> tuple[str, dict[str, int]]:
    """`vnodes` VNodes placed on 3 PNodes, then the busiest PNode Lost: (its name, each
    allocation's epoch before). Its migrations touch 3 PNodes, so 96 fit a transaction."""
    await loop_tests.add_pnodes(store.inner, 3, cpu="64", memory="64Gi")
    spec = [helpers.vnode(f"v{i}", cpu="100m", memory="64Mi") for i in range(vnodes)]
    await loop_tests.add_network(store.inner, spec)
    loop = network_loop.NetworkReconciler(store, clock_mod.FakeClock())
    assert await loop.reconcile("net") == reconcile_base.Result()
    await with_digests(store.inner)
    before = await base.list_all(store.inner, network_loop.Allocation)
    hosting: dict[str, int] = {}
    for a in before:
        hosting[a.spec.pnode] = hosting.get(a.spec.pnode, 0) + 1
    victim = max(hosting, key=lambda name: hosting[name])
    lost = "Lost"
    await loop_tests.edit(
        store.inner, pnode.PNode, victim, lambda p: setattr(p.status, "phase", lost)
    )
    store.transactions.clear()
    return victim, {a.name: a.spec.epoch for a in before}


async def test_a_lost_pnodes_work_moves_in_few_transactions(either_store: Counting) -> None:
    store = either_store
    vnodes = 400 if isinstance(store.inner, sqlite.SqliteStore) else 300  # moto is slower
    victim, epochs = await placed_then_lost(store, vnodes)
    bumps_before = {
        p.name: p.status.assignments_version for p in await base.list_all(store.inner, pnode.PNode)
    }
    moved = sum(1 for a in await base.list_all(store.inner, network_loop.Allocation)
                if a.spec.pnode == victim)  # fmt: skip
    assert moved > 96  # more than one transaction's worth
    loop = network_loop.NetworkReconciler(store, clock_mod.FakeClock())
    assert await loop.reconcile("net") == reconcile_base.Result()
    allocations = await loop_tests.check_invariants(store.inner)
    await check_digests(store.inner)
    assert len(allocations) == vnodes
    assert victim not in {a.spec.pnode for a in allocations}
    for a in allocations:  # moved ones one epoch on, the others untouched
        assert a.spec.epoch in (epochs[a.name], epochs[a.name] + 1)
    assert sum(a.spec.epoch - epochs[a.name] for a in allocations) == moved
    # One transaction per 96 migrations (an Update each, 3 PNodes, the Check), where it
    # was one per migration (the status update is a plain update, not counted here).
    assert store.transactions == [100] * (moved // 96) + [moved % 96 + 4]
    assert all(ops <= base.MAX_TRANSACTION_OPS for ops in store.transactions)
    after = {p.name: p for p in await base.list_all(store.inner, pnode.PNode)}
    gained = {name: 0 for name in after}
    for a in allocations:
        if a.spec.epoch != epochs[a.name]:
            gained[a.spec.pnode] += 1
    for name, node in after.items():  # one bump per migration touching the PNode, as before
        touched = moved if name == victim else gained[name]
        assert node.status.assignments_version == bumps_before[name] + touched, name


async def test_a_group_of_migrations_that_conflicts_writes_nothing(store: Counting) -> None:
    nodes = await loop_tests.add_pnodes(store.inner, 3)
    net = await loop_tests.add_network(store.inner, [helpers.vnode("a"), helpers.vnode("b")])
    placed = network_apply.Applier(store, net, nodes, None, None)
    await placed.apply((place(1, nodes[0].name), place(2, nodes[0].name)))
    held = await base.list_all(store.inner, network_loop.Allocation)
    fresh = [await store.inner.get(pnode.PNode, n.name) for n in nodes]
    before = await loop_tests.versions(store.inner)
    stale = fresh[2]
    await loop_tests.edit(store.inner, pnode.PNode, stale.name, lambda p: None)  # rv moves on
    before[("PNode", stale.name)] += 1
    moves = tuple(
        network_actions.Migrate(
            allocation=was, to_pnode=to, new_epoch=2, reason="pnode lost",
            pnode_incarnation=1, vnode_hash="h", resources=was.spec.resources,
        )
        for was, to in zip(held, (fresh[1].name, stale.name), strict=True)
    )  # fmt: skip
    net = await store.inner.get(network.Network, "net")
    applier = network_apply.Applier(store, net, fresh, None, None)
    with pytest.raises(errors.Conflict):
        await applier.apply(moves)
    assert await loop_tests.versions(store.inner) == before  # not one record written
    await loop_tests.check_invariants(store.inner)


class ConflictOnce(Counting):
    """The real store, where another writer updates a PNode just before the `at`-th
    transaction (counting from 1), so that transaction's op on it conflicts."""

    def __init__(self, inner: base.Store, *, at: int, pnode_name: str) -> None:
        super().__init__(inner)
        self.at, self.pnode_name = at, pnode_name

    async def transact(self, ops: Sequence[base.Op]) -> list[meta.Resource | None]:
        if len(self.transactions) + 1 == self.at:
            await loop_tests.edit(self.inner, pnode.PNode, self.pnode_name, lambda p: None)
        return await super().transact(ops)


async def test_a_conflict_mid_migration_keeps_the_first_group_and_the_next_pass_ends_it(
    store: Counting,
) -> None:
    victim, epochs = await placed_then_lost(store, 400)
    moved = {a.name for a in await base.list_all(store.inner, network_loop.Allocation)
             if a.spec.pnode == victim}  # fmt: skip
    assert len(moved) > 96  # more than one group
    racing = ConflictOnce(store.inner, at=2, pnode_name=victim)
    loop = network_loop.NetworkReconciler(racing, clock_mod.FakeClock())
    assert await loop.reconcile("net") == reconcile_base.Result(requeue=True)
    half = {a.name: a for a in await loop_tests.check_invariants(store.inner)}
    await check_digests(store.inner)
    first = {n for n in moved if half[n].spec.pnode != victim}
    assert len(first) == 96  # the first group landed whole, the second not at all
    assert all(half[n].spec.epoch == epochs[n] + 1 for n in first)
    assert all(half[n].spec.epoch == epochs[n] for n in moved - first)
    # The next pass re-reads and moves the rest, each exactly one epoch on.
    assert await loop.reconcile("net") == reconcile_base.Result()
    done = await loop_tests.check_invariants(store.inner)
    await check_digests(store.inner)
    assert victim not in {a.spec.pnode for a in done}
    assert all(a.spec.epoch == epochs[a.name] + (a.name in moved) for a in done)
