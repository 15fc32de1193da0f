"""A dead PNode's work moves at lease + grace, by timers and events alone (issue 13).

Wired as the server wires them: the view, the manager, the PNode and network loops and the
event routing, on a real SQLite store and a FakeClock, with no resync. The PNode hosting
the network stops renewing; the other two keep heartbeating (their renewals noted as the
lease keeper notes them). The test moves the clock in quarter seconds and, between moves,
waits until no loop has work queued or in flight, then reads what was written. So each
transition is seen at the moment it falls due and not a step later: NotReady exactly at
the lease's expiry, Lost exactly `lost_grace` after, and every VNode on it re-placed and
resolvable before the clock moves again: the lifecycle loop's write of Lost is what wakes
the networks on the PNode (the routing's pnode-placement rule), no timer or resync in
between.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import pytest

from api.resources import allocation
from controller import config as config_mod
from controller.runtime import clock as clocks
from controller.runtime import events
from controller.runtime import manager as managers
from controller.state import view as view_mod
from reconcilers import network as network_loop
from reconcilers import pnode as pnode_loop
from store import base, sqlite
from tests.controller.state import test_view as records
from tests.support import wait

CONFIG = config_mod.ControlPlaneConfig(heartbeat_interval=1.0, lease_duration=2.0, lost_grace=0.5)
PNODES = ("p0", "p1", "p2")
VNODES = tuple(f"v{i}" for i in range(12))
STEP = 0.25


class Counted:
    """The real store, counting the transactions that move an allocation (an Update of one)."""

    def __init__(self, inner: sqlite.SqliteStore) -> None:
        self.inner = inner
        self.moves: list[int] = []

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)

    async def transact(self, ops: list[base.Op]) -> list[object]:
        updates = [
            op
            for op in ops
            if isinstance(op, base.Update) and isinstance(op.obj, allocation.Allocation)
        ]
        if updates:
            self.moves.append(len(updates))
        return list(await self.inner.transact(ops))


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[sqlite.SqliteStore]:
    opened = await sqlite.SqliteStore.open(tmp_path / "state.db")
    yield opened
    await opened.close()


class Cluster:
    def __init__(self, store: sqlite.SqliteStore) -> None:
        self.store = Counted(store)
        self.clock = clocks.FakeClock()
        self.view = view_mod.View(store, self.clock, config=CONFIG)
        self.manager = managers.Manager(self.clock, rng=random.Random(3))
        self.t0 = self.clock.now()
        #: The PNodes that heartbeat.
        self.alive = set(PNODES)

    async def start(self) -> None:
        ops: list[base.Op] = []
        for name in PNODES:
            node = records.pnode_record(name)
            node.status.phase_since = self.t0
            held = records.lease_record(name, renewed=self.t0)
            held.spec.duration_seconds = CONFIG.lease_duration
            ops += [base.Create(node), base.Create(held)]
        await self.store.inner.transact(ops)
        await self.view.refresh()
        store: base.Store = self.store  # type: ignore[assignment]  # forwards every call
        network = network_loop.NetworkReconciler(
            store,
            self.clock,
            config=CONFIG,
            on_written=self.view.apply_written,
            on_deleted=self.view.apply_deleted,
            pnodes=lambda: self.view.pnodes,
        )
        lifecycle = pnode_loop.PNodeReconciler(
            store,
            self.clock,
            config=CONFIG,
            on_written=self.view.apply_written,
            on_deleted=self.view.apply_deleted,
            local_renewal=self.view.renewals.at,
        )

        async def pnode_keys() -> list[str]:
            return sorted(self.view.pnodes)

        self.manager.register(network, workers=CONFIG.workers_per_loop)
        # Listed once at start (no resync_every): from then on, timers and events only.
        self.manager.register(lifecycle, workers=CONFIG.workers_per_loop, list_keys=pnode_keys)
        self.view.subscribe(self._changed)
        await self.manager.start()

    def _changed(self, old: object, new: object) -> None:
        lookup = events.Lookup(self.view.networks_on, self.view.networks_not_ready)
        for loop, key in events.keys_for_change(old, new, lookup):  # type: ignore[arg-type]
            self.manager.enqueue(loop, key)

    async def quiet(self) -> None:
        """Until no loop has a key queued or in flight (store writes run on a thread)."""

        async def idle() -> bool:
            await self.clock.settle()
            return all(
                s.depth == 0 and s.in_flight == 0
                for s in (self.manager.stats(name) for name in ("network", "pnode"))
            )

        await wait.until(idle, within=30.0, what="the loops to go idle")

    async def step(self) -> float:
        """The live PNodes heartbeat; the clock moves a quarter second; the loops finish
        what that woke. Returns the seconds since the start."""
        for name in sorted(self.alive):
            self.view.renewals.note(name, 1, self.clock.now())
        await self.clock.advance(STEP)
        await self.quiet()
        return (self.clock.now() - self.t0).total_seconds()

    def phase(self, name: str) -> tuple[str, float]:
        node = self.view.pnodes[name]
        assert node.status.phase_since is not None
        return node.status.phase, (node.status.phase_since - self.t0).total_seconds()

    def hosts(self) -> dict[str, tuple[str, int]]:
        return {
            a.spec.vnode: (a.spec.pnode, a.spec.epoch) for a in self.view.allocations_of("net")
        }


async def test_a_dead_pnodes_work_is_resolvable_elsewhere_at_lease_plus_grace(store) -> None:
    cluster = Cluster(store)
    await cluster.start()
    try:
        created = await store.create(records.network_record("net", VNODES))
        cluster.view.apply_written([created])
        await cluster.quiet()
        placed = cluster.hosts()
        assert set(placed) == set(VNODES)
        victim = placed["v0"][0]  # graph affinity gathers the small chain on one PNode
        on_victim = {v for v, (host, _) in placed.items() if host == victim}
        cluster.alive.discard(victim)
        cluster.store.moves.clear()

        expiry, lost_at = CONFIG.lease_duration, CONFIG.lease_duration + CONFIG.lost_grace
        seen: list[tuple[float, str]] = []
        while (now := await cluster.step()) < lost_at:
            phase, since = cluster.phase(victim)
            seen.append((now, phase))
            if now < expiry:
                assert phase == "Ready", seen
            else:
                assert (phase, since) == ("NotReady", expiry), seen
            assert cluster.hosts() == placed, f"moved before Lost, at {now}s"
        assert now == lost_at
        assert cluster.phase(victim) == ("Lost", lost_at)
        # Already moved and resolvable: no clock move since the Lost write.
        moved = cluster.hosts()
        for vnode, (host, epoch) in placed.items():
            if vnode in on_victim:
                assert moved[vnode] == (moved[vnode][0], epoch + 1)
                assert moved[vnode][0] in cluster.alive
            else:
                assert moved[vnode] == (host, epoch)
        when = cluster.clock.now()
        for vnode in VNODES:
            endpoints = cluster.view.endpoints("net", vnode, when)
            assert [e.pnode for e in endpoints] == [moved[vnode][0]], vnode
        # The whole move is one transaction.
        assert cluster.store.moves == [len(on_victim)]
        assert cluster.view.pnodes[victim].status.allocated.cpu == 0
        assert when - cluster.t0 == timedelta(seconds=lost_at)
    finally:
        await cluster.manager.stop(0)
