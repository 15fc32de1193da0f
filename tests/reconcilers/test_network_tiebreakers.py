"""Replica counts that the spec alone does not give: a validation policy (at least two) and
a tiebreaker (one more while requested). The network loop places and stops them against a
real SQLite store, on PNodes apart from the VNode's other replicas, and never loses a
tiebreaker request to a status write from a stale copy."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest

from api.resources import allocation, meta, network, pnode
from controller.runtime import clock as clock_mod
from controller.trust import tiebreak
from reconcilers import base as reconcile_base
from reconcilers import network_actions, network_plan, slots
from store import base, sqlite
from tests.reconcilers import helpers
from tests.reconcilers import test_network_reconciler as loop_tests

Allocation = allocation.Allocation
Network = network.Network
PNode = pnode.PNode
R = TypeVar("R", bound=meta.Resource)

VNODES = [helpers.vnode("a"), helpers.vnode("b", inputs=["a"], replicas=2)]


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[sqlite.SqliteStore]:
    db = await sqlite.SqliteStore.open(tmp_path / "state.db")
    yield db
    await db.close()


@pytest.fixture
def clock() -> clock_mod.FakeClock:
    return clock_mod.FakeClock()


def hosts(found: list[Allocation], vnode: str) -> dict[int, str]:
    return {a.spec.replica: a.spec.pnode for a in found if a.spec.vnode == vnode}


async def test_tiebreaker_is_placed_apart_then_stopped_when_cleared(
    store: sqlite.SqliteStore, clock: clock_mod.FakeClock
) -> None:
    await loop_tests.add_pnodes(store, 3)
    await loop_tests.add_network(store, VNODES)
    loop = loop_tests.reconciler(store, clock)
    await loop.reconcile("net")
    before = hosts(await loop_tests.check_invariants(store), "b")
    assert sorted(before) == [0, 1]

    assert await tiebreak.request(store, "net", "b") is True
    assert await loop.reconcile("net") == reconcile_base.Result()
    after = hosts(await loop_tests.check_invariants(store), "b")
    assert {r: after[r] for r in (0, 1)} == before  # the disputed replicas stay put
    assert after[2] not in before.values()
    net = await store.get(Network, "net")
    assert net.status.tiebreakers == ["b"]
    assert (net.status.desired_slots, net.status.ready_slots, net.status.phase) == (4, 4, "Ready")

    assert await loop.reconcile("net") == reconcile_base.Result()  # nothing more to do
    assert (await store.get(Network, "net")).status.tiebreakers == ["b"]

    assert await tiebreak.clear(store, "net") == ["b"]
    assert await loop.reconcile("net") == reconcile_base.Result()
    assert hosts(await loop_tests.check_invariants(store), "b") == before
    net = await store.get(Network, "net")
    assert net.status.tiebreakers == []
    assert net.status.desired_slots == 3
    assert net.status.slot_epochs == {"net.b.2": 1}  # a later tiebreaker continues from 1


async def test_tiebreaker_with_no_free_pnode_is_unschedulable_not_doubled_up(
    store: sqlite.SqliteStore, clock: clock_mod.FakeClock
) -> None:
    await loop_tests.add_pnodes(store, 2)
    await loop_tests.add_network(store, VNODES)
    loop = loop_tests.reconciler(store, clock)
    await loop.reconcile("net")
    assert await tiebreak.request(store, "net", "b") is True
    result = await loop.reconcile("net")
    assert result.requeue_after == loop_tests.CONFIG.unschedulable_retry
    found = await loop_tests.check_invariants(store)
    assert sorted(hosts(found, "b")) == [0, 1]
    net = await store.get(Network, "net")
    assert net.status.tiebreakers == ["b"]
    unschedulable = next(c for c in net.status.conditions if c.type == "Unschedulable")
    assert unschedulable.status == "True"
    assert "net.b.2" in unschedulable.message


async def test_validation_policy_runs_two_replicas_of_each_vnode(
    store: sqlite.SqliteStore, clock: clock_mod.FakeClock
) -> None:
    await loop_tests.add_pnodes(store, 3)
    record = helpers.network_record(VNODES)
    record.spec.validation = "replicas"
    record.metadata.uid, record.metadata.resource_version = "", 0
    await store.create(record)
    await loop_tests.reconciler(store, clock).reconcile("net")
    found = await loop_tests.check_invariants(store)
    assert sorted(a.metadata.name for a in found) == ["net.a.0", "net.a.1", "net.b.0", "net.b.1"]


class WriterBetween:
    """The SQLite store, except that `between` runs once, after the loop has read the
    Network and before it reads the PNodes: another writer's change lands while the loop
    holds a copy that is about to be stale."""

    def __init__(self, inner: sqlite.SqliteStore, between: Callable[[], Awaitable[object]]) -> None:
        self.inner, self.between = inner, between
        self.fired = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def list(self, kind: type[R], **kw: Any) -> base.Page[R]:
        if kind is PNode and not self.fired:
            self.fired = True
            await self.between()
        return await self.inner.list(kind, **kw)


async def test_a_stale_status_write_conflicts_instead_of_wiping_the_request(
    store: sqlite.SqliteStore, clock: clock_mod.FakeClock
) -> None:
    await loop_tests.add_pnodes(store, 4)  # the tiebreaker's place, whichever is NotReady
    await loop_tests.add_network(store, VNODES)
    await loop_tests.reconciler(store, clock).reconcile("net")
    # Something the status reports changes (a PNode NotReady: ready_slots drops), so the
    # loop has a status to write; the tiebreaker request lands while it plans.
    placed = hosts(await base.list_all(store, Allocation), "a")[0]
    await loop_tests.edit(store, PNode, placed, lambda p: setattr(p.status, "phase", "NotReady"))
    racing = WriterBetween(store, lambda: tiebreak.request(store, "net", "b"))
    stale_loop = loop_tests.reconciler(racing, clock)
    assert await stale_loop.reconcile("net") == reconcile_base.Result(requeue=True)
    assert racing.fired
    assert (await store.get(Network, "net")).status.tiebreakers == ["b"]
    await loop_tests.reconciler(store, clock).reconcile("net")
    net = await store.get(Network, "net")
    assert net.status.tiebreakers == ["b"]
    assert sorted(hosts(await loop_tests.check_invariants(store), "b")) == [0, 1, 2]


async def test_a_stale_placement_conflicts_and_the_next_pass_places_the_tiebreaker(
    store: sqlite.SqliteStore, clock: clock_mod.FakeClock
) -> None:
    await loop_tests.add_pnodes(store, 3)
    await loop_tests.add_network(store, VNODES)
    racing = WriterBetween(store, lambda: tiebreak.request(store, "net", "b"))
    loop = loop_tests.reconciler(racing, clock)
    assert await loop.reconcile("net") == reconcile_base.Result(requeue=True)
    assert await loop.reconcile("net") == reconcile_base.Result()
    assert sorted(hosts(await loop_tests.check_invariants(store), "b")) == [0, 1, 2]
    assert (await store.get(Network, "net")).status.tiebreakers == ["b"]


@pytest.mark.parametrize("seed", range(8))
def test_tiebreaker_avoids_every_pnode_holding_a_replica(seed: int) -> None:
    """Pure plan: replicas on a Ready PNode and on a NotReady one (kept through its grace)
    are both avoided, whatever the seed."""
    net = helpers.network_record(VNODES, status={"tiebreakers": ["b"]})
    nodes = [helpers.pnode_record(f"p{i}") for i in range(6)]
    nodes[1] = helpers.pnode_record("p1", phase="NotReady")
    current = [
        helpers.allocation_record(net, "a", 0, "p2"),
        helpers.allocation_record(net, "b", 0, "p0"),
        helpers.allocation_record(net, "b", 1, "p1"),
    ]
    plan = network_plan.compute_plan(net, current, nodes, seed=seed, now=helpers.NOW)
    placed = [a for a in plan.actions if isinstance(a, network_actions.Place)]
    assert [p.slot for p in placed] == ["net.b.2"]
    assert placed[0].pnode not in {"p0", "p1"}
    assert [s for s, _, _ in slots.slots(net)] == ["net.a.0", "net.b.0", "net.b.1", "net.b.2"]
    assert plan.status.tiebreakers == ["b"]


def test_replica_beyond_the_running_count_is_scaled_down() -> None:
    net = helpers.network_record(VNODES)
    current = [
        helpers.allocation_record(net, "b", 0, "p0"),
        helpers.allocation_record(net, "b", 1, "p1"),
        helpers.allocation_record(net, "b", 2, "p2"),  # a tiebreaker, since cleared
    ]
    nodes = [helpers.pnode_record(f"p{i}") for i in range(3)]
    rules = [
        network_plan.classify(
            network_plan.Facts(
                a, net, net.vnode("b"), nodes[a.spec.replica], slots.vnode_hash(net, "b")
            )
        ).name
        for a in current
    ]
    assert rules == ["current", "current", "replica-scaled-down"]
    net.status.tiebreakers = ["b"]
    kept = network_plan.classify(
        network_plan.Facts(current[2], net, net.vnode("b"), nodes[2], slots.vnode_hash(net, "b"))
    )
    assert kept.name == "current"
