"""No lost assignments: two replicas' views over one store, under seeded interleavings.

Issue 16, item 2: with two replicas, placements applied through one left allocations
Pending on a Ready PNode for minutes. The network loop re-reads a PNode from the store, so
its `assignments_version` already counts another replica's placement; its write-through
put that PNode in its view before the other replica's allocation arrived, so an agent was
told version V without that VNode, and when the allocation arrived the version was still V.

Here two replicas (a view and a network loop each, the real ones) share one real SQLite
store. A seeded schedule interleaves placements, deletions and drains through either
replica with refreshes of either view, some of them with a write landing between the
refresh's read of PNodes and its read of allocations. After every step each PNode's agent
(one attached to each replica) takes what its replica's view shows, as WatchAssignments
would. Checked at every step: a version an agent is shown stands for exactly the set it is
shown (the store's set at that version, recorded as each transaction lands); and at the end,
after both views caught up, every agent runs the store's final set.
"""

from __future__ import annotations

import builtins
import dataclasses
import random
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pytest

from api.resources import allocation, meta, network, pnode
from controller import config as config_mod
from controller.runtime import clock as clocks
from controller.state import view as view_mod
from reconcilers import network as network_loop
from store import base, sqlite
from tests.reconcilers import helpers
from tests.support import hooked_store

CONFIG = config_mod.ControlPlaneConfig()
PNODES = ("p1", "p2", "p3")
NETWORKS = tuple(f"n{i}" for i in range(8))
SEEDS = range(40)

#: What an agent runs of an allocation: (slot, epoch).
Slot = tuple[str, int]


class RecordingStore(hooked_store.HookedStore):
    """The real store; after each write, the set of every PNode at its new version is
    recorded (the truth a shown version is checked against), and a test may run a write
    right after a listing of one kind, as a request landing mid-refresh would."""

    def __init__(self, inner: base.Store) -> None:
        super().__init__(inner)
        #: (pnode, assignments_version) → the slots it stands for.
        self.history: dict[tuple[str, int], frozenset[Slot]] = {}

    async def create(self, obj: base.R) -> base.R:
        written = await self.inner.create(obj)
        await self.record()
        return written

    async def update(self, obj: base.R) -> base.R:
        written = await self.inner.update(obj)
        await self.record()
        return written

    async def delete(
        self,
        kind: type[base.R],
        name: str,
        *,
        resource_version: int | None = None,
        uid: str | None = None,
    ) -> None:
        await self.inner.delete(kind, name, resource_version=resource_version, uid=uid)
        await self.record()

    async def transact(self, ops: Sequence[base.Op]) -> builtins.list[meta.Resource | None]:
        written = await self.inner.transact(ops)
        await self.record()
        return written

    async def record(self) -> None:
        nodes = await base.list_all(self.inner, pnode.PNode)
        held = await base.list_all(self.inner, allocation.Allocation)
        for node in nodes:
            slots = frozenset((a.name, a.spec.epoch) for a in held if a.spec.pnode == node.name)
            key = (node.name, node.status.assignments_version)
            assert self.history.get(key, slots) == slots, f"{key} stood for two sets"
            self.history[key] = slots


@dataclasses.dataclass
class Agent:
    """What one PNode's agent runs, as told by one replica."""

    pnode: str
    version: int = 0
    slots: frozenset[Slot] = frozenset()

    def watch(self, view: view_mod.View, history: dict[tuple[str, int], frozenset[Slot]]) -> None:
        aset = view.assignment_set(self.pnode)
        if aset is None or aset.version <= self.version:
            return
        shown = frozenset((a.allocation.name, a.allocation.spec.epoch) for a in aset.assignments)
        stands_for = history[(self.pnode, aset.version // view_mod.GENERATION_SPAN)]
        assert shown == stands_for, (
            f"{self.pnode}: version {aset.version} shown with {sorted(shown)}; "
            f"it stands for {sorted(stands_for)}"
        )
        self.version, self.slots = aset.version, shown


@dataclasses.dataclass
class Replica:
    view: view_mod.View
    loop: network_loop.NetworkReconciler
    agents: dict[str, Agent]


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[RecordingStore]:
    recording = RecordingStore(await sqlite.SqliteStore.open(tmp_path / "state.db"))
    yield recording
    await recording.close()


def _replica(store: RecordingStore, clock: clocks.FakeClock) -> Replica:
    view = view_mod.View(store, clock, config=CONFIG)
    loop = network_loop.NetworkReconciler(
        store, clock, on_written=view.apply_written, on_deleted=view.apply_deleted
    )
    return Replica(view, loop, {p: Agent(p) for p in PNODES})


def _network(name: str) -> network.Network:
    vnodes = [helpers.vnode("in", cpu="250m", memory="64Mi")]
    vnodes.append(helpers.vnode("out", inputs=["in"], cpu="250m", memory="64Mi", replicas=2))
    record = helpers.network_record(vnodes, name=name)
    record.metadata.uid = ""
    record.metadata.resource_version = 0
    return record


async def _setup(store: RecordingStore) -> None:
    for name in PNODES:
        node = helpers.pnode_record(name)
        node.metadata.uid, node.metadata.resource_version = "", 0
        node.status.assignments_version = 1
        node.status.assignments_digest = allocation.EMPTY_DIGEST  # as Register writes it
        await store.create(node)


async def _step(
    rng: random.Random, store: RecordingStore, replicas: list[Replica], applied: list[str]
) -> None:
    """One seeded step: a write through a replica, or a refresh (perhaps torn by a write)."""
    choice = rng.random()
    replica = rng.choice(replicas)
    if choice < 0.3 and len(applied) < len(NETWORKS):
        name = NETWORKS[len(applied)]
        applied.append(name)
        await store.create(_network(name))
        await replica.loop.reconcile(name)
    elif choice < 0.55 and applied:
        await replica.loop.reconcile(rng.choice(applied))
    elif choice < 0.6 and applied:
        await _delete(store, rng.choice(applied))
    elif choice < 0.65:
        await _drain(store, rng.choice(PNODES), rng.random() < 0.5)
    elif choice < 0.8 and applied:
        other = next(r for r in replicas if r is not replica)
        target = rng.choice(applied)
        store.after_list[rng.choice(("PNode", "PNodeLease"))] = lambda: _reconciled(other, target)
        await replica.view.refresh()
    else:
        await replica.view.refresh()


async def _reconciled(replica: Replica, name: str) -> None:
    await replica.loop.reconcile(name)


async def _delete(store: RecordingStore, name: str) -> None:
    try:
        record = await store.get(network.Network, name)
    except Exception:
        return
    if record.metadata.deletion_timestamp is None:
        record.metadata.deletion_timestamp = helpers.NOW
        await store.update(record)


async def _drain(store: RecordingStore, name: str, draining: bool) -> None:
    node = await store.get(pnode.PNode, name)
    if node.spec.draining != draining:
        node.spec.draining = draining
        await store.update(node)


@pytest.mark.parametrize("seed", SEEDS)
async def test_no_version_is_shown_without_its_whole_set(store: RecordingStore, seed: int) -> None:
    clock = clocks.FakeClock()
    await _setup(store)
    replicas = [_replica(store, clock), _replica(store, clock)]
    for replica in replicas:
        await replica.view.refresh()
    rng = random.Random(seed)
    applied: list[str] = []
    for _ in range(60):
        await clock.advance(0.05)  # a refresh keeps what its replica wrote after it began
        await _step(rng, store, replicas, applied)
        for replica in replicas:
            for agent in replica.agents.values():
                agent.watch(replica.view, store.history)
    # Quiesce: every network reconciled until nothing changes, both views refreshed.
    await _drain_none(store)
    for _ in range(3):
        for name in applied:
            await replicas[0].loop.reconcile(name)
    await clock.advance(0.05)
    for replica in replicas:
        await replica.view.refresh()
        for agent in replica.agents.values():
            agent.watch(replica.view, store.history)
    held = await base.list_all(store.inner, allocation.Allocation)
    assert held, "the schedule placed nothing: it tests nothing"
    for replica in replicas:
        for name, agent in replica.agents.items():
            final = frozenset((a.name, a.spec.epoch) for a in held if a.spec.pnode == name)
            assert agent.slots == final, f"seed {seed}: {name}'s agent runs {sorted(agent.slots)}"


async def _drain_none(store: RecordingStore) -> None:
    for name in PNODES:
        await _drain(store, name, False)
