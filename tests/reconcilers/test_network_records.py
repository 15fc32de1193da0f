"""The network loop planning from the informer's Networks and Allocations (issue 13), as the
server wires it (`records=` its view), against a real SQLite store and the real view.

A replica's view lags the store on purpose here (it follows the feed only when the test
says so), and every write of a pass is conditioned on what was read: a plan from a stale
copy only conflicts, writes nothing, and the next pass reads the store. And a cached,
view-reading loop plans exactly what a loop reading everything from the store plans.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Callable
from concurrent import futures
from pathlib import Path
from typing import Any

import pytest

from api.resources import allocation, meta, network, pnode
from controller import config as config_mod
from controller.runtime import clock as clock_mod
from controller.state import view as view_mod
from reconcilers import base as reconcile_base
from reconcilers import network as network_loop
from reconcilers import network_actions, slots
from store import base, sqlite
from tests.reconcilers import helpers
from tests.reconcilers import test_network_reconciler as loop_tests

Allocation = allocation.Allocation
Network = network.Network
PNode = pnode.PNode
CONFIG = network_actions.PlanConfig(unschedulable_retry=5.0)
DONE = reconcile_base.Result()
AGAIN = reconcile_base.Result(requeue=True)


class CountingStore:
    """The real store, counting the reads a pass makes of Networks and Allocations."""

    def __init__(self, inner: base.Store) -> None:
        self.inner = inner
        self.network_gets = 0
        self.allocation_lists = 0

    async def get(self, kind: type[meta.Resource], name: str) -> Any:
        if kind is Network:
            self.network_gets += 1
        return await self.inner.get(kind, name)

    async def list(self, kind: type[meta.Resource], **kwargs: Any) -> Any:
        if kind is Allocation:
            self.allocation_lists += 1
        return await self.inner.list(kind, **kwargs)

    async def update(self, obj: Any) -> Any:
        return await self.inner.update(obj)

    async def delete(self, kind: type[meta.Resource], name: str, **kwargs: Any) -> None:
        await self.inner.delete(kind, name, **kwargs)

    async def transact(self, ops: Any) -> Any:
        return await self.inner.transact(ops)

    def reads(self) -> tuple[int, int]:
        return self.network_gets, self.allocation_lists


class Replica:
    """One orchestrator replica's network loop over its own view, wired as the server's."""

    def __init__(self, store: base.Store, clock: clock_mod.FakeClock) -> None:
        self.counting = CountingStore(store)
        self.view = view_mod.View(store, clock, config=config_mod.ControlPlaneConfig())
        changes = network_loop.ChangedPNodes()
        self.view.subscribe(changes.note)
        self.loop = network_loop.NetworkReconciler(
            self.counting,  # type: ignore[arg-type]  # forwards every call the loop makes
            clock,
            config=CONFIG,
            on_written=self.view.apply_written,
            on_deleted=self.view.apply_deleted,
            pnodes=lambda: self.view.pnodes,
            pnode_changes=changes,
            records=self.view,
        )

    async def reconcile(self, key: str = "net") -> reconcile_base.Result:
        return await self.loop.reconcile(key)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[base.Store]:
    db = await sqlite.SqliteStore.open(tmp_path / "state.db")
    yield db
    await db.close()


async def replica(store: base.Store) -> Replica:
    made = Replica(store, clock_mod.FakeClock())
    await made.view.refresh()
    return made


async def test_passes_plan_from_the_view_and_read_nothing_of_it_from_the_store(store) -> None:
    await loop_tests.add_pnodes(store, 4)
    for name in ("a", "b"):
        await loop_tests.add_network(store, loop_tests.VNODES, name=name)
    one = await replica(store)
    for name in ("a", "b"):
        assert await one.reconcile(name) == DONE
    await loop_tests.edit(store, PNode, "p0", lambda p: setattr(p.status, "phase", "Lost"))
    await one.view.follow()
    for name in ("a", "b"):
        assert await one.reconcile(name) == DONE
    assert one.counting.reads() == (0, 0)
    placed = await loop_tests.check_invariants(store)
    assert len(placed) == 12
    assert not [a for a in placed if a.spec.pnode == "p0"]
    # The view was written through: it holds what the store holds.
    assert one.view.allocations == {a.metadata.name: a for a in placed}


async def test_an_allocation_the_view_lacks_only_conflicts_and_the_store_is_read_next(
    store,
) -> None:
    await loop_tests.add_pnodes(store, 3)
    await loop_tests.add_network(store, loop_tests.VNODES)
    lagging = await replica(store)  # its view will not see the other replica's placements
    other = await replica(store)
    assert await other.reconcile() == DONE
    before = await loop_tests.versions(store)
    # It plans every slot as unplaced: the first create finds the slot taken.
    assert await lagging.reconcile() == AGAIN
    assert await loop_tests.versions(store) == before
    assert lagging.counting.reads() == (0, 0)
    # The next pass reads the Network and its Allocations from the store: all in place.
    assert await lagging.reconcile() == DONE
    assert lagging.counting.reads() == (1, 1)
    assert await loop_tests.versions(store) == before
    assert len(await loop_tests.check_invariants(store)) == 6
    # And the one after, from the view again, once it has caught up.
    await lagging.view.follow()
    assert await lagging.reconcile() == DONE
    assert lagging.counting.reads() == (1, 1)
    assert await loop_tests.versions(store) == before


async def test_a_network_the_view_lacks_is_read_from_the_store_not_stopped(store) -> None:
    await loop_tests.add_pnodes(store, 3)
    lagging = await replica(store)  # refreshed before the network exists
    await loop_tests.add_network(store, loop_tests.VNODES)
    other = await replica(store)
    assert await other.reconcile() == DONE
    placed = await loop_tests.check_invariants(store)
    before = await loop_tests.versions(store)
    assert await lagging.reconcile() == DONE
    assert lagging.counting.reads() == (1, 1)  # asked the store, not taken for deleted
    assert await loop_tests.check_invariants(store) == placed  # nothing stopped or moved
    assert await loop_tests.versions(store) == before


async def test_a_stale_network_in_the_view_only_conflicts_then_the_new_spec_is_planned(
    store,
) -> None:
    await loop_tests.add_pnodes(store, 4)
    await loop_tests.add_network(store, loop_tests.VNODES)
    one = await replica(store)
    assert await one.reconcile() == DONE
    placed = {a.metadata.name: a for a in await loop_tests.check_invariants(store)}
    hidden_on = sorted({a.spec.pnode for a in placed.values() if a.spec.vnode == "hidden"})
    await loop_tests.edit(store, PNode, hidden_on[0], lambda p: setattr(p.spec, "draining", True))
    await one.view.follow()  # brings the drain; the retune below comes after it

    def retune(net: Network) -> None:
        hidden = net.vnode("hidden")
        assert hidden is not None
        hidden.params = {"units": 64}
        net.metadata.generation += 1

    await loop_tests.edit(store, Network, "net", retune)
    before = await loop_tests.versions(store)
    # Planned from the old spec: the migration's Check on the Network fails.
    assert await one.reconcile() == AGAIN
    assert await loop_tests.versions(store) == before
    # Read from the store: every replica of hidden runs the new spec, none on the drained.
    assert await one.reconcile() == DONE
    stored = await store.get(Network, "net")
    after = await loop_tests.check_invariants(store)
    for alloc in after:
        assert alloc.spec.vnode_hash == slots.vnode_hash(stored, alloc.spec.vnode)
        if alloc.spec.vnode == "hidden":
            assert alloc.spec.pnode != hidden_on[0]
            assert alloc.spec.epoch == placed[alloc.metadata.name].spec.epoch + 1
    assert one.counting.network_gets == 1


# -- the cached, view-reading loop against a loop that reads everything from the store -------


async def deterministic_store(clock: clock_mod.FakeClock) -> sqlite.SqliteStore:
    """A private in-memory store whose uids come from a counter: two of them built by the
    same steps hold the same records, so placement seeds (from uids) agree."""
    counter = itertools.count()
    return sqlite.SqliteStore.in_memory(
        clock=clock.now,
        executor=futures.ThreadPoolExecutor(max_workers=1),
        uids=lambda: f"uid-{next(counter)}",
    )


Step = Callable[[base.Store], Any]


def lose(name: str) -> Step:
    async def step(store: base.Store) -> None:
        await loop_tests.edit(store, PNode, name, lambda p: setattr(p.status, "phase", "Lost"))

    return step


def respec(change: Callable[[Network], None]) -> Step:
    async def step(store: base.Store) -> None:
        def bump(net: Network) -> None:
            change(net)
            net.metadata.generation += 1

        await loop_tests.edit(store, Network, "net", bump)

    return step


def tiebreak(vnodes: list[str]) -> Step:
    async def step(store: base.Store) -> None:
        def request(net: Network) -> None:
            net.status.tiebreakers = vnodes
            net.status.tiebreak_generation += 1

        await loop_tests.edit(store, Network, "net", request)

    return step


def _param(vnode: str, units: int) -> Callable[[Network], None]:
    def change(net: Network) -> None:
        spec = net.vnode(vnode)
        assert spec is not None
        spec.params = {"units": units}

    return change


def _replicas(vnode: str, count: int) -> Callable[[Network], None]:
    def change(net: Network) -> None:
        spec = net.vnode(vnode)
        assert spec is not None
        spec.replicas = count

    return change


def _grow(net: Network) -> None:
    net.spec.vnodes.append(network.VNodeSpec.model_validate(helpers.vnode("head", inputs=["l9"])))


STEPS: list[Step] = [
    lose("p1"),
    respec(_param("l3", 7)),
    tiebreak(["l5"]),
    respec(_replicas("l2", 3)),
    lose("p4"),
    respec(_grow),
    tiebreak([]),
    respec(_replicas("l2", 1)),
]


async def outcome(store: base.Store) -> list[tuple[Any, ...]]:
    """What the loop decided, as the store holds it."""
    allocations = await loop_tests.check_invariants(store)
    net = await store.get(Network, "net")
    placed = sorted(
        (a.metadata.name, a.spec.pnode, a.spec.epoch, a.spec.vnode_hash, a.metadata.uid)
        for a in allocations
    )
    status = net.status
    return [*placed, (status.phase, status.ready_slots, status.desired_slots)]


async def converge(reconcile: Callable[[str], Any]) -> None:
    for _ in range(10):
        result = await reconcile("net")
        if not result.requeue:
            return
    pytest.fail("no convergence in 10 passes")


async def test_the_cached_view_reading_loop_plans_what_a_store_reading_loop_plans() -> None:
    clocks = clock_mod.FakeClock(), clock_mod.FakeClock()
    plain_store, cached_store = [await deterministic_store(c) for c in clocks]
    try:
        for each in (plain_store, cached_store):
            await loop_tests.add_pnodes(each, 8, cpu="2", memory="4Gi")
            chain = [helpers.vnode(f"l{i}", inputs=[f"l{i - 1}"] if i else [], replicas=2)
                     for i in range(10)]  # fmt: skip
            await loop_tests.add_network(each, chain)
        plain = network_loop.NetworkReconciler(plain_store, clocks[0], config=CONFIG)
        cached = Replica(cached_store, clocks[1])
        await cached.view.refresh()
        await converge(plain.reconcile)
        await converge(cached.reconcile)
        assert await outcome(cached_store) == await outcome(plain_store)
        for step in STEPS:
            for each in (plain_store, cached_store):
                await step(each)
            await cached.view.follow()
            await converge(plain.reconcile)
            await converge(cached.reconcile)
            assert await outcome(cached_store) == await outcome(plain_store)
        # Planned from the view throughout: the feed brought every change before the pass.
        assert cached.counting.reads() == (0, 0)
    finally:
        for each in (plain_store, cached_store):
            await each.close()
