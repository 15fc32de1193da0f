"""The lifecycle loop's cheap resync (issue 13): a PNode whose cached records have not moved
and whose next transition is not due is requeued without a store read, yet lease expiry is
still acted on at its moment and a change whose event was missed at the next resync.

The loop runs against a real SQLite store wrapped to count reads; the informer cache is a
dict the test keeps, as the server's view would (sometimes behind the store, never ahead).
"""

from __future__ import annotations

import dataclasses
from datetime import datetime, timedelta

import pytest

from api.resources import lease, meta, pnode
from controller.runtime import clock as clock_mod
from reconcilers import base as reconcile
from reconcilers import pnode as lifecycle
from store import base, errors, sqlite
from tests.reconcilers import test_pnode_lifecycle as lifecycle_tests

CONFIG = lifecycle_tests.CONFIG
T0 = clock_mod.FakeClock().now()


# -- pure: when a reconcile may skip the store ---------------------------------------------


@dataclasses.dataclass(frozen=True)
class SkipCase:
    id: str
    settled: lifecycle.Settled | None
    versions: tuple[int, int] | None
    want: float | None


SETTLED = lifecycle.Settled(pnode_version=3, lease_version=5, due=T0 + timedelta(seconds=4))
SKIP_CASES = [
    SkipCase("never settled", None, (3, 5), None),
    SkipCase("not in the cache", SETTLED, None, None),
    SkipCase("pnode moved", SETTLED, (4, 5), None),
    SkipCase("lease moved", SETTLED, (3, 6), None),
    SkipCase("unchanged, deadline ahead", SETTLED, (3, 5), 4.0),
    SkipCase(
        "unchanged, deadline due", dataclasses.replace(SETTLED, due=T0), (3, 5), None
    ),
]


@pytest.mark.parametrize("case", SKIP_CASES, ids=[c.id for c in SKIP_CASES])
def test_settled_for(case: SkipCase) -> None:
    assert lifecycle.settled_for(case.settled, case.versions, T0) == case.want


@dataclasses.dataclass(frozen=True)
class SettleCase:
    id: str
    phase: pnode.PNodePhase
    transition: lifecycle.Transition
    want: bool
    deregistered: bool = False
    allocations: int = 0


WAIT = lifecycle.Transition(requeue_after=3.0)
SETTLE_CASES = [
    SettleCase("ready, nothing due", "Ready", WAIT, True),
    SettleCase("ready holding allocations", "Ready", WAIT, True, allocations=2),
    SettleCase("ready, a write due", "Ready", lifecycle.Transition(phase="NotReady"), False),
    SettleCase("ready, no deadline", "Ready", lifecycle.Transition(), False),
    SettleCase("deregistering", "Ready", WAIT, False, deregistered=True),
    SettleCase("not ready: a renewal it cannot see turns it Ready", "NotReady", WAIT, False),
    SettleCase("lost, holding nothing", "Lost", WAIT, True),
    SettleCase("lost, still holding allocations", "Lost", WAIT, False, allocations=1),
    SettleCase("lost, delete due", "Lost", lifecycle.Transition(delete=True), False),
]


@pytest.mark.parametrize("case", SETTLE_CASES, ids=[c.id for c in SETTLE_CASES])
def test_may_settle(case: SettleCase) -> None:
    node = lifecycle_tests.make_node(T0, phase=case.phase, deregistered=case.deregistered)
    got = lifecycle.may_settle(node, case.transition, allocations=case.allocations)
    assert got == case.want


# -- the loop against a real store ---------------------------------------------------------


class CountingStore:
    """The real store, counting the reads the loop makes."""

    def __init__(self, inner: base.Store) -> None:
        self.inner = inner
        self.reads = 0

    async def get(self, kind, name):
        self.reads += 1
        return await self.inner.get(kind, name)

    async def list(self, kind, **kwargs):
        self.reads += 1
        return await self.inner.list(kind, **kwargs)

    async def update(self, obj):
        return await self.inner.update(obj)

    async def transact(self, ops):
        return await self.inner.transact(ops)


@pytest.fixture
async def store(tmp_path):
    db = await sqlite.SqliteStore.open(tmp_path / "state.db")
    yield db
    await db.close()


class Cache:
    """What the view would hold: records copied from the store when the test says so."""

    def __init__(self, store: base.Store) -> None:
        self.store = store
        self.records: dict[str, tuple[pnode.PNode, lease.PNodeLease | None]] = {}

    async def sync(self, name: str = "p1") -> None:
        node = await self.store.get(pnode.PNode, name)
        try:
            stored: lease.PNodeLease | None = await self.store.get(lease.PNodeLease, name)
        except errors.NotFound:
            stored = None
        self.records[name] = (node, stored)

    def get(self, name: str) -> tuple[pnode.PNode, lease.PNodeLease | None] | None:
        return self.records.get(name)


async def setup(store, clock, *, renewed: float, local=None):
    await lifecycle_tests.seed(store, clock, renewed=renewed)
    cache = Cache(store)
    await cache.sync()
    counting = CountingStore(store)
    recorder = lifecycle_tests.Recorder()
    reconciler = lifecycle_tests.loop(
        counting, clock, recorder, cached=cache.get, local_renewal=local
    )
    return reconciler, counting, cache, recorder


async def _phase(store: base.Store) -> str:
    return (await store.get(pnode.PNode, "p1")).status.phase


async def test_an_unchanged_ready_pnode_is_requeued_for_its_lease_expiry_without_a_read(
    store,
) -> None:
    clock = clock_mod.FakeClock()
    reconciler, counting, _, recorder = await setup(store, clock, renewed=-1.0)
    for _ in range(3):  # the first decides from the cache, the rest are settled
        assert await reconciler.reconcile("p1") == reconcile.Result(requeue_after=3.0)
    await clock.advance(1.0)
    assert await reconciler.reconcile("p1") == reconcile.Result(requeue_after=2.0)
    assert counting.reads == 0
    assert reconciler.settled == 1
    # At its deadline the lease has expired: the store is read and NotReady written.
    await clock.advance(2.0)
    assert await reconciler.reconcile("p1") == reconcile.Result(requeue_after=0.0)
    assert counting.reads > 0
    assert await _phase(store) == "NotReady"
    assert reconciler.settled == 0
    assert [r.status.phase for r in recorder.written] == ["NotReady"]


async def test_a_deregistration_whose_event_was_missed_is_acted_on_at_the_next_resync(
    store,
) -> None:
    clock = clock_mod.FakeClock()
    reconciler, counting, cache, recorder = await setup(store, clock, renewed=-1.0)
    assert await reconciler.reconcile("p1") == reconcile.Result(requeue_after=3.0)
    node = await store.get(pnode.PNode, "p1")
    node.status.conditions = meta.set_condition(
        [], type="Deregistered", status="True", reason="AgentDeregistered", message="", now=T0
    )
    await store.update(node)
    await cache.sync()  # the feed brought it; the event that would enqueue the key was lost
    # The resync enqueues every key: the moved version sends this one to the store.
    assert await reconciler.reconcile("p1") == reconcile.Result()
    assert counting.reads > 0
    assert recorder.deleted == [("PNode", "p1"), ("PNodeLease", "p1")]


async def test_a_cache_behind_the_store_only_sends_the_loop_to_the_store(store) -> None:
    clock = clock_mod.FakeClock()
    reconciler, counting, cache, recorder = await setup(store, clock, renewed=-1.0)
    await clock.advance(3.0)  # the cached lease has expired ...
    stored = await store.get(lease.PNodeLease, "p1")
    stored.spec.renew_time = clock.now()
    await store.update(stored)  # ... but another replica renewed it; the cache lags
    assert await reconciler.reconcile("p1") == reconcile.Result(requeue_after=4.0)
    assert counting.reads > 0
    assert await _phase(store) == "Ready"
    assert recorder.written == []
    # Settled on the store's versions: once the cache catches up, no reads again.
    await cache.sync()
    reads = counting.reads
    assert await reconciler.reconcile("p1") == reconcile.Result(requeue_after=4.0)
    assert counting.reads == reads


async def test_a_persisted_renewal_is_decided_from_the_cache(store) -> None:
    clock = clock_mod.FakeClock()
    reconciler, counting, cache, _ = await setup(store, clock, renewed=-1.0)
    assert await reconciler.reconcile("p1") == reconcile.Result(requeue_after=3.0)
    stored = await store.get(lease.PNodeLease, "p1")
    stored.spec.renew_time = clock.now()
    await store.update(stored)
    await cache.sync()
    counting.reads = 0
    assert await reconciler.reconcile("p1") == reconcile.Result(requeue_after=4.0)
    assert counting.reads == 0


async def test_a_local_renewal_left_out_of_the_fingerprint_only_moves_the_deadline_later(
    store,
) -> None:
    clock = clock_mod.FakeClock()
    renewed: dict[str, datetime] = {}
    reconciler, counting, _, recorder = await setup(
        store, clock, renewed=-1.0, local=lambda name, inc: renewed.get(name)
    )
    assert await reconciler.reconcile("p1") == reconcile.Result(requeue_after=3.0)
    await clock.advance(1.0)
    renewed["p1"] = clock.now()  # a heartbeat this replica has not persisted yet
    assert await reconciler.reconcile("p1") == reconcile.Result(requeue_after=2.0)
    await clock.advance(2.0)  # the settled deadline: decided again, with the renewal
    assert await reconciler.reconcile("p1") == reconcile.Result(requeue_after=2.0)
    assert await _phase(store) == "Ready"
    assert recorder.written == []
    assert counting.reads == 0
