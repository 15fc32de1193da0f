"""The PNode lifecycle loop: the pure transition table with a fake clock, then the loop
against a real SQLite store (phase writes, counters, garbage collection, conflicts)."""

from __future__ import annotations

import dataclasses
from datetime import datetime, timedelta

import pytest

from api.resources import allocation, lease, meta, pnode
from controller import config as config_mod
from controller.runtime import clock as clock_mod
from reconcilers import base as reconcile
from reconcilers import pnode as lifecycle
from store import base, errors, sqlite

CONFIG = config_mod.ControlPlaneConfig(
    heartbeat_interval=1.0, lease_duration=4.0, lost_grace=2.0, lost_retention=3600.0
)
HELD = lifecycle.HELD_RECHECK_SECONDS


def make_node(
    now: datetime,
    *,
    phase: pnode.PNodePhase = "Ready",
    since: float | None = -10.0,
    incarnation: int = 1,
    deregistered: bool = False,
    name: str = "p1",
) -> pnode.PNode:
    node = pnode.PNode(
        metadata=meta.ObjectMeta(name=name), spec=pnode.PNodeSpec(address="10.0.0.1:7100")
    )
    node.status.phase = phase
    node.status.phase_since = None if since is None else now + timedelta(seconds=since)
    node.status.incarnation = incarnation
    if deregistered:
        node.status.conditions = meta.set_condition(
            [], type="Deregistered", status="True", reason="AgentDeregistered", message="", now=now
        )
    return node


def make_lease(now: datetime, *, incarnation: int = 1, renewed: float, name: str = "p1"):
    return lease.PNodeLease(
        metadata=meta.ObjectMeta(name=name),
        spec=lease.LeaseSpec(
            incarnation=incarnation,
            renew_time=now + timedelta(seconds=renewed),
            duration_seconds=CONFIG.lease_duration,
        ),
    )


@dataclasses.dataclass(frozen=True)
class Case:
    id: str
    phase: pnode.PNodePhase
    since: float | None
    #: (incarnation, renewed seconds relative to now) of the stored lease, or None.
    stored: tuple[int, float] | None
    expected_phase: pnode.PNodePhase | None
    expected_requeue: float | None = None
    delete: bool = False
    incarnation: int = 1
    allocations: int = 0
    local: float | None = None
    deregistered: bool = False


CASES = [
    Case("ready-lease-holds", "Ready", -10, (1, -1), None, expected_requeue=3.0),
    Case("ready-lease-expires-exactly-now", "Ready", -10, (1, -4), "NotReady"),
    Case("ready-lease-long-expired", "Ready", -10, (1, -60), "NotReady"),
    Case("ready-lease-of-old-incarnation-ignored", "Ready", -1, (1, -0.5), None, 3.0, False, 2),
    Case("ready-no-lease-counts-from-phase-since", "Ready", -1, None, None, 3.0),
    Case("ready-no-lease-for-a-whole-lease", "Ready", -5, None, "NotReady"),
    Case("ready-local-renewal-newer-than-stored", "Ready", -10, (1, -5), None, 3.0, local=-1),
    Case("notready-within-grace", "NotReady", -1.5, (1, -6), None, expected_requeue=0.5),
    Case("notready-grace-passed", "NotReady", -2, (1, -6), "Lost", allocations=3),
    Case("notready-renewed-again", "NotReady", -1, (1, -0.5), "Ready"),
    Case("lost-within-retention", "Lost", -600, (1, -700), None, expected_requeue=3000.0),
    Case("lost-never-revived-by-a-renewal", "Lost", -600, (1, -0.1), None, 3000.0),
    Case("lost-retention-passed-empty", "Lost", -3600, (1, -4000), None, delete=True),
    Case("lost-retention-passed-holding", "Lost", -3600, (1, -4000), None, HELD, allocations=1),
    Case("deregistered-empty", "Ready", -10, (1, -1), None, delete=True, deregistered=True),
    Case(
        "deregistered-holding", "Ready", -10, (1, -3.5), None, 0.5, allocations=2, deregistered=True
    ),
    Case(
        "deregistered-lost-holding-rechecked",
        "Lost",
        -600,
        (1, -700),
        None,
        HELD,
        allocations=2,
        deregistered=True,
    ),
    Case("phase-since-missing-is-restamped", "NotReady", None, (1, -60), "NotReady"),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
async def test_transition_table(case: Case) -> None:
    clock = clock_mod.FakeClock()
    now = clock.now()
    node = make_node(
        now,
        phase=case.phase,
        since=case.since,
        incarnation=case.incarnation,
        deregistered=case.deregistered,
    )
    stored = None
    if case.stored is not None:
        stored = make_lease(now, incarnation=case.stored[0], renewed=case.stored[1])
    local = None if case.local is None else now + timedelta(seconds=case.local)
    result = lifecycle.compute_transition(
        node, stored, now=now, config=CONFIG, allocations=case.allocations, local_renewal=local
    )
    assert result.phase == case.expected_phase
    assert result.delete == case.delete
    if case.expected_phase is None and not case.delete:
        assert result.requeue_after == pytest.approx(case.expected_requeue)
    if case.expected_phase is not None or case.delete:
        assert result.reason


async def test_a_silent_pnode_walks_the_whole_lifecycle_on_its_requeue_timers() -> None:
    """Each requeue_after lands exactly on the next transition: no polling needed."""
    clock = clock_mod.FakeClock()
    start = clock.now()
    node = make_node(start, since=0.0)
    stored = make_lease(start, renewed=0.0)
    allocations = 2
    seen: list[str] = []
    for _ in range(10):
        now = clock.now()
        step = lifecycle.compute_transition(
            node, stored, now=now, config=CONFIG, allocations=allocations
        )
        if step.delete:
            seen.append("deleted")
            break
        if step.phase is not None:
            node = lifecycle.apply_phase(node, step, now=now, allocations=allocations)
            seen.append(node.status.phase)
            if node.status.phase == "Lost":
                assert node.status.evictions == 2
                allocations = 0  # the network loop moved its work away
            continue
        assert step.requeue_after is not None
        await clock.advance(step.requeue_after)
    assert seen == ["NotReady", "Lost", "deleted"]
    assert clock.now() - start == timedelta(seconds=4 + 2 + 3600)


async def test_apply_phase_keeps_the_reliability_history() -> None:
    now = clock_mod.FakeClock().now()
    node = make_node(now)
    expired = lifecycle.Transition(phase="NotReady", reason="NodeLeaseExpired", message="m")
    not_ready = lifecycle.apply_phase(node, expired, now=now, allocations=5)
    assert not_ready.status.missed_heartbeats == 1
    assert not_ready.status.evictions == 0
    assert not_ready.status.phase_since == now
    (ready,) = [c for c in not_ready.status.conditions if c.type == "Ready"]
    assert (ready.status, ready.reason, ready.last_transition_time) == (
        "False",
        "NodeLeaseExpired",
        now,
    )
    later = now + timedelta(seconds=2)
    lost = lifecycle.apply_phase(
        not_ready, lifecycle.Transition(phase="Lost", reason="PNodeLost"), now=later, allocations=5
    )
    assert (lost.status.missed_heartbeats, lost.status.evictions) == (1, 5)
    (ready,) = [c for c in lost.status.conditions if c.type == "Ready"]
    assert (ready.status, ready.reason) == ("False", "PNodeLost")
    assert ready.last_transition_time == now  # still False: the transition time stays
    assert node.status.phase == "Ready"  # the input is never mutated


# -- against a real store ------------------------------------------------------------------


@pytest.fixture
async def store(tmp_path):
    db = await sqlite.SqliteStore.open(tmp_path / "state.db")
    yield db
    await db.close()


class Recorder:
    def __init__(self) -> None:
        self.written: list[meta.Resource] = []
        self.deleted: list[tuple[str, str]] = []

    def on_written(self, records) -> None:
        self.written.extend(r for r in records if r is not None)

    def on_deleted(self, kind, name) -> None:
        self.deleted.append((kind.KIND, name))


async def seed(store: base.Store, clock, *, phase="Ready", since=-10.0, renewed=-60.0, holding=0):
    node = make_node(clock.now(), phase=phase, since=since)
    node = await store.create(node)
    await store.create(make_lease(clock.now(), renewed=renewed))
    for replica in range(holding):
        await store.create(
            allocation.Allocation(
                metadata=meta.ObjectMeta(name=allocation.slot_name("net", "a", replica)),
                spec=allocation.AllocationSpec(
                    network="net", vnode="a", replica=replica, pnode="p1", epoch=1
                ),
            )
        )
    return node


def loop(store, clock, recorder: Recorder, **kwargs) -> lifecycle.PNodeReconciler:
    return lifecycle.PNodeReconciler(
        store,
        clock,
        config=CONFIG,
        on_written=recorder.on_written,
        on_deleted=recorder.on_deleted,
        **kwargs,
    )


async def test_expired_lease_marks_not_ready_then_lost_counting_evictions(store) -> None:
    clock = clock_mod.FakeClock()
    recorder = Recorder()
    await seed(store, clock, holding=2)
    reconciler = loop(store, clock, recorder)
    assert reconciler.name == "pnode"

    assert await reconciler.reconcile("p1") == reconcile.Result(requeue_after=0.0)
    stored = await store.get(pnode.PNode, "p1")
    assert (stored.status.phase, stored.status.missed_heartbeats) == ("NotReady", 1)
    assert stored.status.phase_since == clock.now()
    assert [r.metadata.resource_version for r in recorder.written] == [2]

    result = await reconciler.reconcile("p1")
    assert result.requeue_after == pytest.approx(CONFIG.lost_grace)
    await clock.advance(CONFIG.lost_grace)
    await reconciler.reconcile("p1")
    stored = await store.get(pnode.PNode, "p1")
    assert (stored.status.phase, stored.status.evictions) == ("Lost", 2)


async def test_a_local_renewal_keeps_a_pnode_ready_despite_a_lagging_stored_lease(store) -> None:
    clock = clock_mod.FakeClock()
    recorder = Recorder()
    await seed(store, clock, renewed=-5.0)
    reconciler = loop(
        store,
        clock,
        recorder,
        local_renewal=lambda name, inc: clock.now() - timedelta(seconds=1) if inc == 1 else None,
    )
    result = await reconciler.reconcile("p1")
    assert result.requeue_after == pytest.approx(3.0)
    assert (await store.get(pnode.PNode, "p1")).status.phase == "Ready"
    assert recorder.written == []


async def test_lost_pnode_is_collected_only_once_it_holds_nothing(store) -> None:
    clock = clock_mod.FakeClock()
    recorder = Recorder()
    await seed(store, clock, phase="Lost", since=-3600.0, holding=1)
    reconciler = loop(store, clock, recorder)

    assert await reconciler.reconcile("p1") == reconcile.Result(requeue_after=HELD)
    assert (await store.get(pnode.PNode, "p1")).status.phase == "Lost"

    await store.delete(allocation.Allocation, allocation.slot_name("net", "a", 0))
    assert await reconciler.reconcile("p1") == reconcile.Result()
    for kind in (pnode.PNode, lease.PNodeLease):
        with pytest.raises(errors.NotFound):
            await store.get(kind, "p1")
    assert recorder.deleted == [("PNode", "p1"), ("PNodeLease", "p1")]
    assert await reconciler.reconcile("p1") == reconcile.Result()  # gone: nothing to do


class RacingStore:
    """The real store, with another writer updating the PNode right after this loop read
    its allocations: the interleaving a second replica produces."""

    def __init__(self, inner: base.Store) -> None:
        self.inner = inner
        self.raced = False

    async def get(self, kind, name):
        return await self.inner.get(kind, name)

    async def list(self, kind, **kwargs):
        page = await self.inner.list(kind, **kwargs)
        if not self.raced:
            self.raced = True
            other = await self.inner.get(pnode.PNode, "p1")
            other.status.assignments_version += 1
            await self.inner.update(other)
        return page

    async def update(self, obj):
        return await self.inner.update(obj)

    async def transact(self, ops):
        return await self.inner.transact(ops)


@pytest.mark.parametrize(
    ("phase", "then"),
    [("Ready", reconcile.Result(requeue_after=0.0)), ("Lost", reconcile.Result())],
)
async def test_a_concurrent_write_makes_the_loop_requeue_without_writing(
    store, phase, then
) -> None:
    clock = clock_mod.FakeClock()
    recorder = Recorder()
    await seed(store, clock, phase=phase, since=-3600.0)
    racing = RacingStore(store)
    reconciler = loop(racing, clock, recorder)
    assert await reconciler.reconcile("p1") == reconcile.Result(requeue=True)
    after = await store.get(pnode.PNode, "p1")
    assert after.status.phase == phase
    assert after.metadata.resource_version == 2  # only the other writer's update
    assert recorder.written == []
    assert recorder.deleted == []
    # The next run re-reads and goes through: NotReady written, or the Lost PNode collected.
    assert await reconciler.reconcile("p1") == then
    assert len(recorder.written) + len(recorder.deleted) >= 1


# -- pending PNodes: registered, never heartbeated (issue 11) ------------------------------


async def _walk(node: pnode.PNode, stored: lease.PNodeLease, clock: clock_mod.FakeClock):
    """Drive a silent PNode's transitions on their requeue timers; (phases seen, message)."""
    seen: list[str] = []
    for _ in range(10):
        now = clock.now()
        step = lifecycle.compute_transition(node, stored, now=now, config=CONFIG, allocations=0)
        if step.delete:
            seen.append("deleted")
            return seen, step.message
        if step.phase is not None:
            node = lifecycle.apply_phase(node, step, now=now, allocations=0)
            seen.append(node.status.phase)
            continue
        assert step.requeue_after is not None
        await clock.advance(step.requeue_after)
    raise AssertionError(f"not deleted: {seen}")


async def test_a_pnode_that_never_heartbeated_is_collected_after_pending_retention() -> None:
    clock = clock_mod.FakeClock()
    start = clock.now()
    node = make_node(start, since=0.0)
    node.status.registered_at = start
    stored = make_lease(start, renewed=0.0)  # Register writes the lease, renewed at start
    assert lifecycle.is_pending(node, start + timedelta(seconds=CONFIG.lease_duration), 4.0)
    seen, message = await _walk(node, stored, clock)
    assert seen == ["NotReady", "Lost", "deleted"]
    assert clock.now() - start == timedelta(seconds=4 + 2 + CONFIG.pending_retention)
    assert CONFIG.pending_retention < CONFIG.lost_retention
    assert "never heartbeated" in message


async def test_one_heartbeat_earns_the_full_lost_retention() -> None:
    clock = clock_mod.FakeClock()
    start = clock.now()
    node = make_node(start, since=0.0)
    node.status.registered_at = start
    stored = make_lease(start, renewed=0.5)  # renewed once after registering
    seen, message = await _walk(node, stored, clock)
    assert seen == ["NotReady", "Lost", "deleted"]
    assert clock.now() - start == timedelta(seconds=0.5 + 4 + 2 + CONFIG.lost_retention)
    assert "never heartbeated" not in message


def test_a_pnode_registered_before_registered_at_existed_is_not_pending() -> None:
    now = clock_mod.FakeClock().now()
    node = make_node(now)
    assert node.status.registered_at is None
    assert not lifecycle.is_pending(node, None, CONFIG.lease_duration)
    node.status.registered_at = now
    assert lifecycle.is_pending(node, None, CONFIG.lease_duration)  # no lease at all
