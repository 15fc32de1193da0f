"""The in-memory view against a real SQLite store, on a fake clock: freshness, write-through,
records never moving backwards, liveness from leases, and the signals hot paths wait on.

The record builders at the top are shared by the service tests of this package."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest

from api.resources import allocation, lease, meta, pnode
from api.resources import network as net_model
from controller import config as config_mod
from controller.state import view as view_mod
from store import base

CONFIG = config_mod.ControlPlaneConfig()

# -- record builders (shared with the service tests) ---------------------------------------


def pnode_record(
    name: str,
    *,
    phase: pnode.PNodePhase = "Ready",
    incarnation: int = 1,
    cpu: int = 4000,
    memory: int = 8 * 2**30,
) -> pnode.PNode:
    """`cpu` in millicores, `memory` in bytes."""
    return pnode.PNode(
        metadata=meta.ObjectMeta(name=name),
        spec=pnode.PNodeSpec(
            address=f"{name}.example:7000", capacity=pnode.Capacity(cpu=f"{cpu}m", memory=memory)
        ),
        status=pnode.PNodeStatus(phase=phase, incarnation=incarnation),
    )


def lease_record(name: str, *, renewed: datetime, incarnation: int = 1) -> lease.PNodeLease:
    return lease.PNodeLease(
        metadata=meta.ObjectMeta(name=name),
        spec=lease.LeaseSpec(
            incarnation=incarnation, renew_time=renewed, duration_seconds=CONFIG.lease_duration
        ),
    )


def network_record(
    name: str = "mnist", vnodes: tuple[str, ...] = ("input", "out")
) -> net_model.Network:
    """A chain: each VNode takes the previous one as its input."""
    specs = [
        net_model.VNodeSpec(name=v, kind="dense", inputs=[vnodes[i - 1]] if i else [])
        for i, v in enumerate(vnodes)
    ]
    return net_model.Network(
        metadata=meta.ObjectMeta(name=name, finalizers=["dcnr.io/allocations"]),
        spec=net_model.NetworkSpec(vnodes=specs),
    )


def allocation_record(
    network: str, vnode: str, replica: int, pnode_name: str, *, epoch: int = 1, incarnation: int = 1
) -> allocation.Allocation:
    return allocation.Allocation(
        metadata=meta.ObjectMeta(name=allocation.slot_name(network, vnode, replica)),
        spec=allocation.AllocationSpec(
            network=network,
            vnode=vnode,
            replica=replica,
            pnode=pnode_name,
            epoch=epoch,
            pnode_incarnation=incarnation,
        ),
    )


async def create_all(store: base.Store, *records: meta.Resource) -> list[meta.Resource]:
    return [await store.create(r) for r in records]


# Fixtures (store, clock, view): tests/controller/state/conftest.py.


# -- freshness -----------------------------------------------------------------------------


async def test_refresh_picks_up_records_and_drops_deleted_ones(store, view, clock) -> None:
    await create_all(store, pnode_record("p1"), pnode_record("p2"), network_record())
    await view.refresh()
    assert sorted(view.pnodes) == ["p1", "p2"]
    assert list(view.networks) == ["mnist"]
    assert view.refreshed_at == clock.now()

    await store.delete(pnode.PNode, "p2")
    await view.refresh()
    assert sorted(view.pnodes) == ["p1"]


async def test_write_through_is_visible_without_a_refresh(store, view) -> None:
    (written,) = await create_all(store, network_record())
    view.apply_written([written, None])
    assert view.networks["mnist"].metadata.uid == written.metadata.uid

    await store.delete(net_model.Network, "mnist")
    view.apply_deleted(net_model.Network, "mnist")
    assert "mnist" not in view.networks


async def test_an_older_resource_version_never_replaces_a_newer_one(store, view) -> None:
    (v1,) = await create_all(store, pnode_record("p1"))
    changed = v1.model_copy(deep=True)
    assert isinstance(changed, pnode.PNode)
    changed.status.assignments_version = 7
    v2 = await store.update(changed)
    view.apply_written([v2])
    view.apply_written([v1])
    assert view.pnodes["p1"].metadata.resource_version == 2
    assert view.pnodes["p1"].status.assignments_version == 7


async def test_a_recreated_record_with_a_new_uid_replaces_the_old_one(store, view, clock) -> None:
    (old,) = await create_all(store, pnode_record("p1"))
    bumped = await store.update(old)
    await view.refresh()
    assert view.pnodes["p1"].metadata.resource_version == 2
    await store.delete(pnode.PNode, "p1")
    (new,) = await create_all(store, pnode_record("p1"))
    assert new.metadata.resource_version < bumped.metadata.resource_version
    await clock.advance(1)
    await view.refresh()
    assert view.pnodes["p1"].metadata.uid == new.metadata.uid


async def test_a_refresh_that_began_before_a_local_create_does_not_forget_it(
    store, view, clock
) -> None:
    created: list[meta.Resource] = []

    async def write_meanwhile() -> None:
        created.extend(await create_all(store, network_record("late")))
        view.apply_written(created)

    store.after_list[net_model.Network.KIND] = write_meanwhile
    await view.refresh()
    assert "late" in view.networks, "a refresh older than the write undid it"
    await clock.advance(1)
    await view.refresh()
    assert "late" in view.networks


async def test_a_refresh_that_began_before_a_local_delete_does_not_bring_it_back(
    store, view, clock
) -> None:
    await create_all(store, pnode_record("p1"), allocation_record("mnist", "input", 0, "p1"))
    await view.refresh()

    async def delete_meanwhile() -> None:
        await store.delete(allocation.Allocation, "mnist.input.0")
        view.apply_deleted(allocation.Allocation, "mnist.input.0")

    store.after_list[allocation.Allocation.KIND] = delete_meanwhile
    await view.refresh()
    assert "mnist.input.0" not in view.allocations
    assert view.allocations_on("p1") == []


async def test_a_local_write_older_than_a_refresh_does_not_hide_other_replicas_deletes(
    store, view, clock
) -> None:
    (written,) = await create_all(store, network_record())
    view.apply_written([written])
    await clock.advance(1)
    await store.delete(net_model.Network, "mnist")  # another replica
    await view.refresh()
    assert "mnist" not in view.networks


async def test_a_moved_allocation_leaves_its_old_pnodes_index(store, view) -> None:
    (alloc,) = await create_all(store, allocation_record("mnist", "input", 0, "p1"))
    view.apply_written([alloc])
    moved = alloc.model_copy(deep=True)
    assert isinstance(moved, allocation.Allocation)
    moved.spec.pnode, moved.spec.epoch = "p2", 2
    view.apply_written([await store.update(moved)])
    assert view.allocations_on("p1") == []
    assert [a.spec.epoch for a in view.allocations_on("p2")] == [2]
    assert [a.name for a in view.allocations_of("mnist")] == ["mnist.input.0"]


# -- leases and liveness -------------------------------------------------------------------


async def test_lease_expiry_takes_the_newest_of_persisted_and_local_renewals(
    store, view, clock
) -> None:
    now = clock.now()
    await create_all(
        store, pnode_record("p1", incarnation=2), lease_record("p1", renewed=now, incarnation=2)
    )
    await view.refresh()
    lease_for = timedelta(seconds=CONFIG.lease_duration)
    assert view.lease_expiry("p1") == now + lease_for

    view.renewals.note("p1", 2, now + timedelta(seconds=1))
    assert view.lease_expiry("p1") == now + timedelta(seconds=1) + lease_for
    view.renewals.note("p1", 2, now + timedelta(seconds=0.5))  # late, out of order
    assert view.lease_expiry("p1") == now + timedelta(seconds=1) + lease_for


async def test_lease_expiry_ignores_other_incarnations(store, view, clock) -> None:
    now = clock.now()
    await create_all(
        store, pnode_record("p1", incarnation=2), lease_record("p1", renewed=now, incarnation=1)
    )
    await view.refresh()
    assert view.lease_expiry("p1") is None, "a lease of the old incarnation counted"
    view.renewals.note("p1", 1, now + timedelta(seconds=3))
    assert view.lease_expiry("p1") is None
    view.renewals.note("p1", 2, now + timedelta(seconds=1))
    expected = now + timedelta(seconds=1 + CONFIG.lease_duration)
    assert view.lease_expiry("p1") == expected
    # A stale incarnation's renewal arriving late must not displace the current one's.
    view.renewals.note("p1", 1, now + timedelta(seconds=2))
    assert view.lease_expiry("p1") == expected
    assert view.lease_expiry("nobody") is None


@pytest.mark.parametrize(
    ("phase", "seconds_later", "live"),
    [
        ("Ready", 0.0, True),
        ("Ready", CONFIG.lease_duration - 0.001, True),
        ("Ready", CONFIG.lease_duration, False),  # expiry is exclusive
        ("NotReady", 0.0, False),
        ("Lost", 0.0, False),
    ],
)
async def test_is_live_needs_ready_and_an_unexpired_lease(
    store, view, clock, phase, seconds_later, live
) -> None:
    now = clock.now()
    await create_all(store, pnode_record("p1", phase=phase), lease_record("p1", renewed=now))
    await view.refresh()
    assert view.is_live("p1", now + timedelta(seconds=seconds_later)) is live


async def test_a_pnode_without_a_lease_is_not_live(store, view, clock) -> None:
    await create_all(store, pnode_record("p1"))
    await view.refresh()
    assert not view.is_live("p1", clock.now())
    assert not view.is_live("missing", clock.now())


# -- queries -------------------------------------------------------------------------------


async def test_assignment_set_skips_stale_incarnations_and_missing_networks(
    store, view, clock
) -> None:
    node = pnode_record("p1", incarnation=3)
    node.status.assignments_version = 9
    await create_all(
        store,
        node,
        network_record("mnist"),
        allocation_record("mnist", "input", 0, "p1", incarnation=3),
        allocation_record("mnist", "out", 0, "p1", incarnation=2),  # before re-registering
        allocation_record("gone", "input", 0, "p1", incarnation=3),  # network deleted
        allocation_record("mnist", "removed", 0, "p1", incarnation=3),  # vnode removed
    )
    await view.refresh()
    found = view.assignment_set("p1")
    assert found is not None
    assert found.version == 9 * view_mod.GENERATION_SPAN
    assert [a.allocation.name for a in found.assignments] == ["mnist.input.0"]
    assert found.assignments[0].vnode.name == "input"
    assert found.assignments[0].network.name == "mnist"
    assert view.assignment_set("nobody") is None


async def test_a_set_is_shown_only_with_every_allocation_its_digest_counts(
    store, view, clock
) -> None:
    first = allocation_record("mnist", "input", 0, "p1")
    second = allocation_record("mnist", "out", 0, "p1")
    node = pnode_record("p1")
    node.status.assignments_version = 3
    node.status.assignments_digest = allocation.digest_of([first, second])
    await create_all(store, node, network_record("mnist"), first)
    await view.refresh()
    assert view.assignment_set("p1") == view_mod.UNSETTLED  # "out" has not arrived

    await create_all(store, second)
    await clock.advance(1.0)
    await view.refresh()
    found = view.assignment_set("p1")
    assert found is not None
    assert found.settled
    assert found.version == 3 * view_mod.GENERATION_SPAN
    assert [a.allocation.name for a in found.assignments] == ["mnist.input.0", "mnist.out.0"]


async def test_an_allocation_of_a_missing_network_holds_the_set_back_and_is_a_key(
    store, view
) -> None:
    kept = allocation_record("mnist", "input", 0, "p1")
    orphan = allocation_record("gone", "input", 0, "p1")
    node = pnode_record("p1")
    node.status.assignments_digest = allocation.digest_of([kept, orphan])
    await create_all(store, node, network_record("mnist"), kept, orphan)
    await view.refresh()
    assert view.assignment_set("p1") == view_mod.UNSETTLED
    # The network loop's resync reaches the orphan, and stopping it settles the set.
    assert view.network_keys() == ["gone", "mnist"]


async def test_endpoints_are_the_live_current_ones_sorted_by_replica(store, view, clock) -> None:
    now = clock.now()
    await create_all(
        store,
        network_record(),
        pnode_record("p1"),
        pnode_record("p2"),
        pnode_record("p3"),
        pnode_record("p4", incarnation=2),
        lease_record("p1", renewed=now),
        lease_record("p2", renewed=now),
        lease_record("p3", renewed=now - timedelta(seconds=CONFIG.lease_duration)),  # expired
        lease_record("p4", renewed=now, incarnation=2),
        allocation_record("mnist", "input", 2, "p1", epoch=4),
        allocation_record("mnist", "input", 0, "p2", epoch=1),
        allocation_record("mnist", "input", 1, "p3"),
        allocation_record("mnist", "input", 3, "p4", incarnation=1),  # agent re-registered
        allocation_record("mnist", "out", 0, "p1"),
    )
    await view.refresh()
    assert view.endpoints("mnist", "input", now) == [
        view_mod.Endpoint("p2", "p2.example:7000", 0, 1),
        view_mod.Endpoint("p1", "p1.example:7000", 2, 4),
    ]
    later = now + timedelta(seconds=CONFIG.lease_duration)
    assert view.endpoints("mnist", "input", later) == []
    assert view.endpoints("other", "input", now) == []


# -- signals and subscribers ---------------------------------------------------------------


async def test_signals_bump_for_the_keys_a_change_touches(store, view, clock) -> None:
    now = clock.now()
    records = await create_all(
        store,
        network_record("a"),
        network_record("b"),
        pnode_record("p1"),
        pnode_record("p2"),
        lease_record("p1", renewed=now),
    )
    view.apply_written(records)

    def values() -> dict[str, int]:
        return {
            "net a": view.network_signal("a").value,
            "net b": view.network_signal("b").value,
            "pnode p1": view.pnode_signal("p1").value,
            "pnode p2": view.pnode_signal("p2").value,
            "any": view.changed.value,
        }

    def bumped(before: dict[str, int]) -> set[str]:
        return {key for key, value in values().items() if value != before[key]}

    before = values()
    (alloc,) = await create_all(store, allocation_record("a", "input", 0, "p1"))
    view.apply_written([alloc])
    assert bumped(before) == {"net a", "pnode p1", "any"}

    before = values()
    p1 = view.pnodes["p1"].model_copy(deep=True)
    p1.status.assignments_version += 1
    view.apply_written([await store.update(p1)])
    assert bumped(before) == {"pnode p1", "net a", "any"}

    before = values()
    renewed = view.leases["p1"].model_copy(deep=True)
    renewed.spec.renew_time = now + timedelta(seconds=1)
    view.apply_written([await store.update(renewed)])
    assert bumped(before) == {"net a", "any"}

    before = values()
    net_a = view.networks["a"].model_copy(deep=True)
    net_a.metadata.labels = {"team": "x"}
    view.apply_written([await store.update(net_a)])
    assert bumped(before) == {"net a", "pnode p1", "any"}

    before = values()
    p2 = view.pnodes["p2"].model_copy(deep=True)
    view.apply_written([await store.update(p2)])
    assert bumped(before) == {"pnode p2", "any"}


async def test_wait_past_returns_at_once_when_already_moved_and_wakes_on_bump(clock) -> None:
    signal = view_mod.Signal(clock)
    signal.bump()
    assert await signal.wait_past(0) == 1
    assert await signal.wait_past(1, within=0) == 1  # times out, unchanged
    import asyncio

    waiter = asyncio.ensure_future(signal.wait_past(1))
    await asyncio.sleep(0)
    assert not waiter.done()
    signal.bump()
    assert await waiter == 2


async def test_subscribers_get_old_and_new(store, view, clock) -> None:
    seen: list[tuple[int | None, int | None]] = []

    def record(old: meta.Resource | None, new: meta.Resource | None) -> None:
        def rv(r: meta.Resource | None) -> int | None:
            return None if r is None else r.metadata.resource_version

        seen.append((rv(old), rv(new)))

    def broken(old: meta.Resource | None, new: meta.Resource | None) -> None:
        raise RuntimeError("a failing subscriber must not stop the others")

    view.subscribe(broken)
    view.subscribe(record)
    (v1,) = await create_all(store, network_record())
    view.apply_written([v1])
    v2 = await store.update(v1)
    view.apply_written([v2])
    view.apply_written([v1])  # older: no change, no callback
    await store.delete(net_model.Network, "mnist")
    await clock.advance(1)
    await view.refresh()
    assert seen == [(None, 1), (1, 2), (2, None)]


async def test_a_tiebreaker_elsewhere_raises_the_set_version_and_wakes_the_agent(
    store, view, clock
) -> None:
    """An assignment carries its neighbours' replica counts, so a tiebreaker joining another
    PNode changes what this one must be shown: the version grows, the watcher wakes."""
    node = pnode_record("p1", incarnation=1)
    node.status.assignments_version = 4
    await create_all(
        store, node, network_record("mnist"), allocation_record("mnist", "input", 0, "p1")
    )
    await view.refresh()
    before = view.assignment_set("p1")
    assert before is not None
    signal = view.pnode_signal("p1")
    seen = signal.value
    net = await store.get(net_model.Network, "mnist")
    net.status.tiebreakers = ["input"]
    net.status.tiebreak_generation = 1
    await store.update(net)
    await view.refresh()
    after = view.assignment_set("p1")
    assert after is not None
    assert signal.value != seen
    assert after.version > before.version
    # A later allocation write outweighs any drop of the generations' sum.
    fresh = await store.get(pnode.PNode, "p1")
    fresh.status.assignments_version += 1
    await store.update(fresh)
    await store.delete(allocation.Allocation, "mnist.input.0")
    await view.refresh()
    emptied = view.assignment_set("p1")
    assert emptied is not None
    assert emptied.assignments == ()
    assert emptied.version > after.version
