"""The network loop against a real SQLite store: every write checked by reading the store.

After each step the invariants are read back from the store, not from the loop's answers:
one allocation per slot (the key), the sum of each PNode's allocations equals its
`status.allocated`, and nothing exceeds capacity.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from api.resources import allocation, meta, network, pnode
from controller import config as config_mod
from controller.runtime import clock as clock_mod
from reconcilers import base as reconcile_base
from reconcilers import network as network_loop
from reconcilers import network_actions, network_apply
from store import base, errors, sqlite
from tests.reconcilers import helpers

Allocation = allocation.Allocation
PNode = pnode.PNode
Network = network.Network
CONFIG = network_actions.PlanConfig(unschedulable_retry=5.0)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[base.Store]:
    db = await sqlite.SqliteStore.open(tmp_path / "state.db")
    yield db
    await db.close()


@pytest.fixture
def clock() -> clock_mod.FakeClock:
    return clock_mod.FakeClock()


def reconciler(
    store: base.Store, clock: clock_mod.FakeClock, **kw
) -> network_loop.NetworkReconciler:
    return network_loop.NetworkReconciler(store, clock, config=CONFIG, **kw)


async def add_pnodes(store: base.Store, count: int, **fields) -> list[PNode]:
    created = []
    for i in range(count):
        record = helpers.pnode_record(f"p{i}", **fields)
        record.metadata.uid, record.metadata.resource_version = "", 0
        created.append(await store.create(record))
    return created


async def add_network(
    store: base.Store, vnodes: list[dict[str, Any]], name: str = "net"
) -> Network:
    record = helpers.network_record(vnodes, name=name)
    record.metadata.uid, record.metadata.resource_version = "", 0
    return await store.create(record)


async def edit(store: base.Store, kind: type[meta.Resource], name: str, change) -> None:
    record = await store.get(kind, name)
    change(record)
    await store.update(record)


async def check_invariants(store: base.Store) -> list[Allocation]:
    """Read everything back: accounting exact, no over-commit, one allocation per slot,
    replicas of a VNode apart. Returns the allocations."""
    allocations = await base.list_all(store, Allocation)
    pnodes = {p.metadata.name: p for p in await base.list_all(store, PNode)}
    sums: dict[str, tuple[int, int]] = {}
    for a in allocations:
        assert a.metadata.name == allocation.slot_name(a.spec.network, a.spec.vnode, a.spec.replica)
        cpu, memory = sums.get(a.spec.pnode, (0, 0))
        sums[a.spec.pnode] = (cpu + a.spec.resources.cpu, memory + a.spec.resources.memory)
    for name, node in pnodes.items():
        allocated = node.status.allocated
        assert (allocated.cpu, allocated.memory) == sums.get(name, (0, 0)), name
        assert allocated.cpu <= node.spec.capacity.cpu, name
        assert allocated.memory <= node.spec.capacity.memory, name
    placed: dict[tuple[str, str], list[str]] = {}
    for a in allocations:
        placed.setdefault((a.spec.network, a.spec.vnode), []).append(a.spec.pnode)
    for key, hosts in placed.items():
        assert len(hosts) == len(set(hosts)), f"replicas of {key} share a pnode: {hosts}"
    return allocations


async def versions(store: base.Store) -> dict[tuple[str, str], int]:
    found: dict[tuple[str, str], int] = {}
    for kind in (Allocation, PNode, Network):
        for record in await base.list_all(store, kind):
            found[(kind.KIND, record.metadata.name)] = record.metadata.resource_version
    return found


VNODES = [
    helpers.vnode("input", replicas=2),
    helpers.vnode("hidden", inputs=["input"], replicas=3, cpu="1", memory="1Gi"),
    helpers.vnode("loss", inputs=["hidden"]),
]


async def test_places_every_slot_with_exact_accounting(store, clock) -> None:
    await add_pnodes(store, 4)
    await add_network(store, VNODES)
    written: list[meta.Resource] = []
    loop = reconciler(store, clock, on_written=written.extend)
    assert await loop.reconcile("net") == reconcile_base.Result()
    allocations = await check_invariants(store)
    assert sorted(a.metadata.name for a in allocations) == [
        "net.hidden.0", "net.hidden.1", "net.hidden.2", "net.input.0", "net.input.1",
        "net.loss.0",
    ]  # fmt: skip
    assert {a.spec.epoch for a in allocations} == {1}
    per_pnode: dict[str, int] = {}
    for a in allocations:
        per_pnode[a.spec.pnode] = per_pnode.get(a.spec.pnode, 0) + 1
    for node in await base.list_all(store, PNode):
        # one placement transaction per allocation, each bumping its PNode's version once
        assert node.status.assignments_version == per_pnode.get(node.metadata.name, 0)
    net = await store.get(Network, "net")
    assert (net.status.phase, net.status.desired_slots, net.status.ready_slots) == ("Ready", 6, 6)
    assert net.status.observed_generation == net.metadata.generation
    assert {r.metadata.name for r in written if isinstance(r, Allocation)} == {
        a.metadata.name for a in allocations
    }


async def test_second_reconcile_writes_nothing(store, clock) -> None:
    await add_pnodes(store, 4)
    await add_network(store, VNODES)
    loop = reconciler(store, clock)
    await loop.reconcile("net")
    before = await versions(store)
    await clock.advance(60)
    assert await loop.reconcile("net") == reconcile_base.Result()
    assert await versions(store) == before


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        pytest.param(lambda p: setattr(p.status, "phase", "Lost"), "pnode lost", id="lost"),
        pytest.param(lambda p: setattr(p.spec, "draining", True), "pnode draining",
                     id="draining"),
    ],
)  # fmt: skip
async def test_work_moves_off_a_lost_or_draining_pnode(store, clock, change, reason) -> None:
    await add_pnodes(store, 4)
    await add_network(store, VNODES)
    loop = reconciler(store, clock)
    await loop.reconcile("net")
    before = {a.metadata.name: a for a in await base.list_all(store, Allocation)}
    victim = before["net.hidden.0"].spec.pnode
    moved = {n for n, a in before.items() if a.spec.pnode == victim}
    await edit(store, PNode, victim, change)
    assert await loop.reconcile("net") == reconcile_base.Result()
    after = {a.metadata.name: a for a in await check_invariants(store)}
    assert set(after) == set(before)
    for name, alloc in after.items():
        if name in moved:
            assert alloc.spec.pnode != victim
            assert alloc.spec.epoch == before[name].spec.epoch + 1
            assert alloc.status.reason == reason
        else:
            assert alloc == before[name]
    released = await store.get(PNode, victim)
    assert (released.status.allocated.cpu, released.status.allocated.memory) == (0, 0)


async def test_scale_down_stops_and_releases(store, clock) -> None:
    await add_pnodes(store, 4)
    await add_network(store, VNODES)
    loop = reconciler(store, clock)
    await loop.reconcile("net")

    def scale(net: Network) -> None:
        net.spec.vnodes[1].replicas = 1
        net.metadata.generation += 1

    await edit(store, Network, "net", scale)
    await loop.reconcile("net")
    names = {a.metadata.name for a in await check_invariants(store)}
    assert names == {"net.input.0", "net.input.1", "net.hidden.0", "net.loss.0"}
    net = await store.get(Network, "net")
    assert net.status.desired_slots == 4
    assert net.status.slot_epochs == {"net.hidden.1": 1, "net.hidden.2": 1}


async def test_changed_params_reissue_in_place_with_new_epoch(store, clock) -> None:
    await add_pnodes(store, 4)
    await add_network(store, VNODES)
    loop = reconciler(store, clock)
    await loop.reconcile("net")
    before = {a.metadata.name: a for a in await base.list_all(store, Allocation)}

    def retune(net: Network) -> None:
        net.spec.vnodes[2].params = {"label_smoothing": 0.1}
        net.metadata.generation += 1

    await edit(store, Network, "net", retune)
    await loop.reconcile("net")
    after = {a.metadata.name: a for a in await check_invariants(store)}
    loss = after["net.loss.0"]
    assert loss.spec.pnode == before["net.loss.0"].spec.pnode
    assert loss.spec.epoch == 2
    assert loss.spec.vnode_hash != before["net.loss.0"].spec.vnode_hash
    assert after["net.input.0"].spec.epoch == 1  # its consumers did not change


async def test_delete_stops_everything_then_the_record_goes(store, clock) -> None:
    await add_pnodes(store, 4)
    await add_network(store, VNODES)
    deleted: list[tuple[str, str]] = []
    loop = reconciler(store, clock, on_deleted=lambda kind, name: deleted.append((kind.KIND, name)))
    await loop.reconcile("net")
    await edit(
        store, Network, "net", lambda n: setattr(n.metadata, "deletion_timestamp", clock.now())
    )
    assert await loop.reconcile("net") == reconcile_base.Result()
    assert await check_invariants(store) == []
    with pytest.raises(errors.NotFound):
        await store.get(Network, "net")
    assert ("Network", "net") in deleted
    assert sum(1 for kind, _ in deleted if kind == "Allocation") == 6
    assert await loop.reconcile("net") == reconcile_base.Result()  # gone: nothing to do


async def test_orphan_allocations_of_a_deleted_network_are_stopped(store, clock) -> None:
    await add_pnodes(store, 2)
    await add_network(store, VNODES[:1], name="ghost")
    loop = reconciler(store, clock)
    await loop.reconcile("ghost")
    net = await store.get(Network, "ghost")
    await store.delete(Network, "ghost", resource_version=net.metadata.resource_version)
    assert len(await base.list_all(store, Allocation)) == 2
    assert await loop.reconcile("ghost") == reconcile_base.Result()
    assert await check_invariants(store) == []


async def test_unschedulable_sets_condition_and_requeues(store, clock) -> None:
    await add_pnodes(store, 3, memory="2Gi")
    await add_network(store, [helpers.vnode("a"), helpers.vnode("big", memory="4Gi")])
    result = await reconciler(store, clock).reconcile("net")
    assert result == reconcile_base.Result(requeue_after=CONFIG.unschedulable_retry)
    net = await store.get(Network, "net")
    condition = next(c for c in net.status.conditions if c.type == "Unschedulable")
    assert condition.status == "True"
    assert condition.message == "0/3 pnodes available: 3 insufficient memory (slot net.big.0)"
    assert (net.status.phase, net.status.ready_slots, net.status.desired_slots) == (
        "Allocating", 1, 2,
    )  # fmt: skip
    await check_invariants(store)


async def test_lost_pnode_with_nowhere_to_go_stops_and_epoch_continues_later(store, clock) -> None:
    await add_pnodes(store, 1)
    await add_network(store, [helpers.vnode("a")])
    loop = reconciler(store, clock)
    await loop.reconcile("net")
    await edit(store, PNode, "p0", lambda p: setattr(p.status, "phase", "Lost"))
    result = await loop.reconcile("net")
    assert result.requeue_after == CONFIG.unschedulable_retry
    assert await check_invariants(store) == []
    degraded = (await store.get(Network, "net")).status
    assert (degraded.phase, degraded.slot_epochs) == ("Degraded", {"net.a.0": 1})
    fresh = helpers.pnode_record("fresh")
    fresh.metadata.uid, fresh.metadata.resource_version = "", 0
    await store.create(fresh)
    assert await loop.reconcile("net") == reconcile_base.Result()
    [alloc] = await check_invariants(store)
    assert (alloc.spec.pnode, alloc.spec.epoch) == ("fresh", 2)
    net = await store.get(Network, "net")
    assert (net.status.phase, net.status.slot_epochs) == ("Ready", {})


async def test_two_replicas_racing_converge_without_double_allocation(
    store, clock, tmp_path
) -> None:
    other = await sqlite.SqliteStore.open(tmp_path / "state.db")
    try:
        await add_pnodes(store, 6, cpu="3", memory="4Gi")
        vnodes = [helpers.vnode(f"v{i}", replicas=2, inputs=[f"v{i - 1}"] if i else [])
                  for i in range(8)]  # fmt: skip
        await add_network(store, vnodes)
        loops = [reconciler(store, clock), reconciler(other, clock)]
        for _round in range(20):
            results = await asyncio.gather(*(loop.reconcile("net") for loop in loops))
            await check_invariants(store)
            if all(r == reconcile_base.Result() for r in results):
                break
        else:
            pytest.fail(f"no convergence after 20 rounds: {results}")
        assert len(await check_invariants(store)) == 16
        # A PNode dies; both replicas react at once.
        victim = (await base.list_all(store, Allocation))[0].spec.pnode
        await edit(store, PNode, victim, lambda p: setattr(p.status, "phase", "Lost"))
        for _round in range(20):
            results = await asyncio.gather(*(loop.reconcile("net") for loop in loops))
            await check_invariants(store)
            if all(r == reconcile_base.Result() for r in results):
                break
        else:
            pytest.fail(f"no convergence after the loss: {results}")
        allocations = await check_invariants(store)
        assert len(allocations) == 16
        assert victim not in {a.spec.pnode for a in allocations}
    finally:
        await other.close()


async def test_networks_on_pnode(store, clock) -> None:
    await add_pnodes(store, 1)
    await add_network(store, [helpers.vnode("a")], name="one")
    await add_network(store, [helpers.vnode("a")], name="two")
    loop = reconciler(store, clock)
    await loop.reconcile("one")
    await loop.reconcile("two")
    assert await network_loop.networks_on_pnode(store, "p0") == {"one", "two"}
    assert await network_loop.networks_on_pnode(store, "nobody") == set()


async def test_takes_the_control_plane_config(store, clock) -> None:
    await add_pnodes(store, 1, memory="1Gi")
    await add_network(store, [helpers.vnode("big", memory="2Gi")])
    control = config_mod.ControlPlaneConfig(unschedulable_retry=7.0)
    loop = network_loop.NetworkReconciler(store, clock, config=control)
    assert await loop.reconcile("net") == reconcile_base.Result(requeue_after=7.0)


def test_a_charge_past_capacity_is_refused_but_a_release_never_is() -> None:
    node = helpers.pnode_record("p1", cpu="1")
    half = network.ResourceRequest.model_validate({"cpu": "600m", "memory": "1Mi"})
    once = network_apply.charged(node, add=half)
    assert (once.status.allocated.cpu, once.status.assignments_version) == (600, 1)
    with pytest.raises(network_apply.OverCommit, match="cpu would be 1200, above its capacity"):
        network_apply.charged(once, add=half)
    shrunk = once.model_copy(deep=True)
    shrunk.spec.capacity.cpu = 100  # re-registered smaller: over-committed already
    released = network_apply.charged(shrunk, remove=half)
    assert released.status.allocated.cpu == 0


async def test_delete_leaves_someone_elses_finalizer_to_them(store, clock) -> None:
    await add_pnodes(store, 2)
    await add_network(store, VNODES[:1])
    loop = reconciler(store, clock)
    await loop.reconcile("net")

    def delete_with_other_finalizer(net: Network) -> None:
        net.metadata.finalizers.append("example.com/backup")
        net.metadata.deletion_timestamp = clock.now()

    await edit(store, Network, "net", delete_with_other_finalizer)
    assert await loop.reconcile("net") == reconcile_base.Result()
    assert await check_invariants(store) == []
    net = await store.get(Network, "net")
    assert net.metadata.finalizers == ["example.com/backup"]
    assert net.status.phase == "Terminating"
    before = net.metadata.resource_version
    assert await loop.reconcile("net") == reconcile_base.Result()
    assert (await store.get(Network, "net")).metadata.resource_version == before


async def test_applied_actions_and_unschedulable_slots_are_told_as_events(store, clock) -> None:
    told: list[reconcile_base.Occurrence] = []
    await add_pnodes(store, 3, memory="2Gi")
    await add_network(store, [helpers.vnode("a"), helpers.vnode("big", memory="4Gi")])
    loop = reconciler(store, clock, on_event=told.append)
    await loop.reconcile("net")
    placed = await store.get(Allocation, "net.a.0")
    assert told == [
        reconcile_base.Occurrence(
            "Network", "net", "Normal", "Placed", f"placed net.a.0 on pnode {placed.spec.pnode}"
        ),
        reconcile_base.Occurrence(
            "Network", "net", "Warning", "FailedScheduling",
            "0/3 pnodes available: 3 insufficient memory (slot net.big.0)",
        ),
    ]  # fmt: skip
    told.clear()
    await edit(store, PNode, placed.spec.pnode, lambda p: setattr(p.spec, "draining", True))
    await loop.reconcile("net")
    moved = await store.get(Allocation, "net.a.0")
    assert told[0] == reconcile_base.Occurrence(
        "Network", "net", "Warning", "Migrated",
        f"moved net.a.0 from pnode {placed.spec.pnode} to {moved.spec.pnode}: pnode draining",
    )  # fmt: skip
