"""How many reconcile passes a fixed piece of work costs, with the real routing table.

The work: place a 20-VNode network on 10 PNodes, then a second one on the same PNodes, then
let the agents report every allocation Running, one heartbeat at a time. The view, the
manager, the network and PNode loops and the event routing are wired as the server wires
them, on a real SQLite store and a FakeClock (no timer fires: every pass counted was woken
by an event).

Measured with the routing this table replaced (every write of a network, allocation or
PNode woke every network it touched): network passes a: 23, b: 22 (the second network's
capacity accounting woke the first once, and each of the 40 status reports woke its
network). With the table: 2 each — the one echo left is the allocations the loop creates,
which must wake it (another replica's creation is the same event).
"""

from __future__ import annotations

import asyncio
import collections
import random
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from api.resources import meta
from controller import config as config_mod
from controller.runtime import clock as clocks
from controller.runtime import events
from controller.runtime import manager as managers
from controller.state import view as view_mod
from reconcilers import network as network_loop
from reconcilers import pnode as pnode_loop
from store import base, sqlite
from tests.controller.state import test_view as records

CONFIG = config_mod.ControlPlaneConfig()
PNODES = 10
VNODES = 20

Route = Callable[[meta.Resource | None, meta.Resource | None, view_mod.View], list[events.Key]]


def routed(
    old: meta.Resource | None, new: meta.Resource | None, view: view_mod.View
) -> list[events.Key]:
    """The server's routing: the table, with the view answering its lookups."""
    lookup = events.Lookup(view.networks_on, view.networks_not_ready)
    return events.keys_for_change(old, new, lookup)


class Fleet:
    """The view, the manager and both loops on one store and one fake clock; `passes`
    counts every reconcile by loop."""

    def __init__(self, store: sqlite.SqliteStore, route: Route) -> None:
        self.store = store
        self.clock = clocks.FakeClock()
        self.view = view_mod.View(store, self.clock, config=CONFIG)
        self.manager = managers.Manager(self.clock, rng=random.Random(7))
        self.passes: collections.Counter[events.Key] = collections.Counter()
        self._activity = asyncio.Event()
        self._route = route

    async def start(self) -> None:
        now = self.clock.now()
        ops: list[base.Op] = []
        for i in range(PNODES):
            node = records.pnode_record(f"p{i}")
            node.status.phase_since = now
            ops += [
                base.Create(node),
                base.Create(records.lease_record(f"p{i}", renewed=now)),
            ]
        await self.store.transact(ops)
        await self.view.refresh()
        for reconciler in (
            network_loop.NetworkReconciler(
                self.store,
                self.clock,
                config=CONFIG,
                on_written=self.view.apply_written,
                on_deleted=self.view.apply_deleted,
            ),
            pnode_loop.PNodeReconciler(
                self.store,
                self.clock,
                config=CONFIG,
                on_written=self.view.apply_written,
                on_deleted=self.view.apply_deleted,
                local_renewal=self.view.renewals.at,
            ),
        ):
            self.manager.register(reconciler, workers=CONFIG.workers_per_loop)
        self.manager.observe(self._reconciled)
        self.view.subscribe(self._changed)
        await self.manager.start()

    def _reconciled(self, done: managers.Reconciled) -> None:
        self.passes[(done.loop, done.key)] += 1
        self._activity.set()

    def _changed(self, old: meta.Resource | None, new: meta.Resource | None) -> None:
        for loop, key in self._route(old, new, self.view):
            self.manager.enqueue(loop, key)
        self._activity.set()

    def _idle(self) -> bool:
        return all(
            stats.depth == 0 and stats.in_flight == 0
            for stats in (self.manager.stats(name) for name in ("network", "pnode"))
        )

    async def until_quiet(self, done: Callable[[], bool], *, within: float = 30.0) -> None:
        """Once `done()` holds and no loop has work queued or in flight. Store I/O runs on
        a thread, so between checks this waits for the next pass or view change."""
        while True:
            self._activity.clear()
            await self.clock.settle()
            if done() and self._idle():
                return
            await asyncio.wait_for(self._activity.wait(), within)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[sqlite.SqliteStore]:
    opened = await sqlite.SqliteStore.open(tmp_path / "state.db")
    yield opened
    await opened.close()


async def work(store: sqlite.SqliteStore, route: Route) -> collections.Counter[events.Key]:
    """The fixed piece of work; the network and PNode passes it cost, by key."""
    fleet = Fleet(store, route)
    await fleet.start()
    try:
        vnodes = tuple(f"v{i}" for i in range(VNODES))
        for name in ("a", "b"):
            created = await store.create(records.network_record(name, vnodes))
            fleet.view.apply_written([created])

            def ready(name: str = name) -> bool:
                net = fleet.view.networks.get(name)
                return net is not None and net.status.phase == "Ready"

            await fleet.until_quiet(ready)
            assert len(fleet.view.allocations_of(name)) == VNODES
        for name in sorted(fleet.view.allocations):
            reported = fleet.view.allocations[name].model_copy(deep=True)
            reported.status.phase = "Running"  # what AllocationStatus writes for a heartbeat
            fleet.view.apply_written([await store.update(reported)])
            await fleet.until_quiet(lambda: True)
        return fleet.passes
    finally:
        await fleet.manager.stop(0)


async def test_placing_two_networks_and_their_reports_cost_two_passes_each(store) -> None:
    passes = await work(store, routed)
    print(f"passes: {sorted(passes.items())}")
    network = {key: n for (loop, key), n in passes.items() if loop == "network"}
    assert network == {"a": 2, "b": 2}, "woken by an echo, by accounting or by a report"
    # Each PNode is looked at when it is first given an allocation (it then holds work
    # that keeps it from deletion) — not for every accounting write.
    pnode = {key: n for (loop, key), n in passes.items() if loop == "pnode"}
    assert set(pnode) <= {f"p{i}" for i in range(PNODES)}
    assert all(n <= 2 for n in pnode.values()), pnode


async def test_lease_renewals_wake_no_loop(store) -> None:
    fleet = Fleet(store, routed)
    await fleet.start()
    try:
        before = dict(fleet.passes)
        renewed = fleet.view.leases["p0"].model_copy(deep=True)
        renewed.spec.renew_time = fleet.clock.now()
        renewed.spec.duration_seconds = CONFIG.lease_duration
        fleet.view.apply_written([await store.update(renewed)])
        await fleet.until_quiet(lambda: True)
        assert dict(fleet.passes) == before
    finally:
        await fleet.manager.stop(0)
