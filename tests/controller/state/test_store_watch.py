"""Store stalls are not PNode failures (issue 16): the pure rule that holds a lease open
through the time a replica could not observe the store, what a replica records as such
time (a fake clock drives every call), and the lifecycle loop and liveness judging by it."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta

import pytest

from api.resources import lease, meta, pnode
from controller import config as config_mod
from controller.runtime import clock as clock_mod
from controller.state import cache as cache_mod
from controller.state import liveness as liveness_mod
from controller.state import renewals as renewals_mod
from controller.state import store_watch
from reconcilers import pnode as lifecycle
from store import errors, sqlite

T0 = datetime(2026, 1, 1, tzinfo=UTC)
CONFIG = config_mod.ControlPlaneConfig(
    heartbeat_interval=1.0, lease_duration=4.0, lost_grace=2.0, store_stall_max=10.0
)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def period(start: float, end: float) -> lease.Unobserved:
    return lease.Unobserved(at(start), at(end))


# -- the rule ---------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Held:
    id: str
    #: The clock started at 0 and runs out at `deadline` seconds.
    deadline: float
    periods: tuple[tuple[float, float], ...]
    expected: float
    most: float = 10.0


HELD = [
    Held("nothing-unobserved", 4, (), 4),
    Held("a-stall-inside-the-lease-holds-it-for-its-length", 4, ((2, 5),), 7),
    Held("a-stall-begun-before-the-renewal-counts-from-the-renewal", 4, ((-3, 1),), 5),
    Held("a-stall-ended-before-the-renewal-counts-nothing", 4, ((-3, -1),), 4),
    Held("a-stall-begun-after-the-deadline-was-seen-to-pass", 4, ((4.5, 8),), 4),
    Held("a-stall-begun-exactly-at-the-deadline-counts-nothing", 4, ((4, 8),), 4),
    Held("a-second-stall-inside-the-moved-deadline-counts-too", 4, ((1, 3), (5, 6)), 7),
    Held("a-second-stall-after-the-moved-deadline-does-not", 4, ((1, 3), (7, 9)), 6),
    Held("overlapping-periods-count-their-union-once", 4, ((1, 3), (2, 4)), 7),
    Held("capped-at-most", 4, ((1, 30),), 14),
    Held("most-zero-turns-it-off", 4, ((1, 3),), 4, most=0.0),
]


@pytest.mark.parametrize("case", HELD, ids=lambda c: c.id)
def test_held_through(case: Held) -> None:
    moved = lease.held_through(
        at(case.deadline),
        since=at(0),
        unobserved=[period(*p) for p in case.periods],
        most=case.most,
    )
    assert moved == at(case.expected)


# -- what a replica records -------------------------------------------------------------------


def watch_at(clock: clock_mod.FakeClock) -> store_watch.StoreWatch:
    return store_watch.StoreWatch(clock, stall_after=1.0)


async def test_fast_answers_leave_nothing_unobserved() -> None:
    clock = clock_mod.FakeClock()
    watch = watch_at(clock)
    for _ in range(5):
        token = watch.started()
        await clock.advance(0.5)
        watch.answered(token)
    assert watch.unobserved() == []
    assert watch.snapshot() == store_watch.Snapshot(0.0, 0.0, 0)


async def test_a_stalled_call_is_unobserved_from_the_last_answer_while_it_hangs_and_after() -> None:
    clock = clock_mod.FakeClock()
    watch = watch_at(clock)
    token = watch.started()
    watch.answered(token)
    last_ok = clock.now()
    await clock.advance(0.2)  # idle: nothing in flight, nothing known to be wrong
    assert watch.unobserved() == []
    stalled = watch.started()
    await clock.advance(0.9)  # in flight, but not yet longer than stall_after
    assert watch.unobserved() == []
    await clock.advance(2.0)
    assert watch.unobserved() == [lease.Unobserved(last_ok, clock.now())]
    assert watch.snapshot().stalled_seconds == pytest.approx(3.1)
    watch.answered(stalled)  # the store answers again
    ended = clock.now()
    await clock.advance(5.0)
    assert watch.unobserved() == [lease.Unobserved(last_ok, ended)]
    seen = watch.snapshot()
    assert seen.stalled_seconds == 0.0
    assert seen.unobserved_seconds_total == pytest.approx(3.1)


async def test_a_failure_without_answer_is_unobserved_until_a_call_succeeds() -> None:
    clock = clock_mod.FakeClock()
    watch = watch_at(clock)
    last_ok = clock.now()
    await clock.advance(0.1)
    watch.failed(watch.started())
    await clock.advance(0.1)
    assert watch.unobserved() == [lease.Unobserved(last_ok, clock.now())]
    assert watch.snapshot().failed_calls_total == 1
    await clock.advance(0.3)
    watch.answered(watch.started())
    assert watch.unobserved() == [lease.Unobserved(last_ok, clock.now())]


async def test_a_fast_answer_meanwhile_shortens_the_period_of_a_slow_call() -> None:
    clock = clock_mod.FakeClock()
    watch = watch_at(clock)
    slow = watch.started()
    await clock.advance(3.0)
    watch.answered(watch.started())  # another call got through: the store was there
    fast_ok = clock.now()
    await clock.advance(0.5)
    # Still hanging: unobserved since the newest answer, not since the slow call began.
    assert watch.unobserved() == [lease.Unobserved(fast_ok, clock.now())]
    watch.answered(slow)
    assert watch.unobserved() == [lease.Unobserved(fast_ok, clock.now())]


async def test_cancelled_calls_say_nothing_about_the_store() -> None:
    clock = clock_mod.FakeClock()
    watch = watch_at(clock)
    token = watch.started()
    await clock.advance(0.5)
    watch.abandoned(token)
    await clock.advance(5.0)
    assert watch.unobserved() == []


async def test_the_store_s_own_answers_are_round_trips(tmp_path) -> None:
    """Through `Observed` on a real SQLite store: NotFound and Conflict are answers."""
    clock = clock_mod.FakeClock()
    watch = watch_at(clock)
    store = store_watch.Observed(await sqlite.SqliteStore.open(tmp_path / "s.db"), watch)
    try:
        node = await store.create(
            pnode.PNode(metadata=meta.ObjectMeta(name="p1"), spec=pnode.PNodeSpec(address="a:1"))
        )
        with pytest.raises(errors.NotFound):
            await store.get(pnode.PNode, "nope")
        stale = node.model_copy(deep=True)
        await store.update(node)
        with pytest.raises(errors.Conflict):
            await store.update(stale)
        listed = await store.versions(pnode.PNode)  # the view's resync's listing
        assert [(v.name, v.resource_version) for v in listed.items] == [("p1", 2)]
        assert watch.snapshot() == store_watch.Snapshot(0.0, 0.0, 0)
    finally:
        await store.close()


async def test_the_change_feed_s_calls_and_its_gone_are_round_trips(tmp_path) -> None:
    """The view's feed reads are its round trips while idle; a too-old cursor is the
    store's answer, not a sign it cannot be reached."""
    clock = clock_mod.FakeClock()
    watch = watch_at(clock)
    inner = await sqlite.SqliteStore.open(tmp_path / "s.db", feed_retention=1)
    store = store_watch.Observed(inner, watch)
    try:
        cursor = await store.feed_head([pnode.PNode])
        for name in ("p1", "p2", "p3"):
            await store.create(
                pnode.PNode(
                    metadata=meta.ObjectMeta(name=name), spec=pnode.PNodeSpec(address="a:1")
                )
            )
        with pytest.raises(errors.Gone):
            await store.changes(cursor)
        page = await store.changes(await store.feed_head([pnode.PNode]))
        assert page.changes == []
        assert watch.snapshot() == store_watch.Snapshot(0.0, 0.0, 0)
    finally:
        await store.close()


# -- the lifecycle loop and liveness judge by it ----------------------------------------------


def node_and_lease(now: datetime, *, renewed: float) -> tuple[pnode.PNode, lease.PNodeLease]:
    node = pnode.PNode(metadata=meta.ObjectMeta(name="p1"), spec=pnode.PNodeSpec(address="a:1"))
    node.status.phase = "Ready"
    node.status.phase_since = now - timedelta(seconds=60)
    node.status.incarnation = 1
    stored = lease.PNodeLease(
        metadata=meta.ObjectMeta(name="p1"),
        spec=lease.LeaseSpec(
            incarnation=1,
            renew_time=now + timedelta(seconds=renewed),
            duration_seconds=CONFIG.lease_duration,
        ),
    )
    return node, stored


def test_the_issue_s_stall_marks_no_healthy_pnode_notready() -> None:
    """Issue 16, finding 5: persisted renewal lagging by half a lease, a 3 s stall, judged
    0.7 s after the store resumed, before the heartbeats' replica could persist anew."""
    now = at(100)
    node, stored = node_and_lease(now, renewed=-(2.0 + 3.0 + 0.7))
    stall = [lease.Unobserved(now - timedelta(seconds=3.7), now - timedelta(seconds=0.7))]
    without = lifecycle.compute_transition(node, stored, now=now, config=CONFIG)
    assert without.phase == "NotReady"  # what the chaos run saw
    held = lifecycle.compute_transition(node, stored, now=now, config=CONFIG, unobserved=stall)
    assert held.phase is None
    assert held.requeue_after == pytest.approx(4.0 - 5.7 + 3.0)


async def test_a_pnode_dead_before_a_stall_is_still_lost_within_lease_grace_and_stall() -> None:
    """Walks the silent PNode's lifecycle on its own requeue timers, with the store stalled
    3 s in the middle of its lease: each deadline moves by exactly the stall."""
    clock = clock_mod.FakeClock()
    start = clock.now()
    node, stored = node_and_lease(start, renewed=0.0)
    stall = [lease.Unobserved(start + timedelta(seconds=1), start + timedelta(seconds=4))]
    seen: list[tuple[str, float]] = []
    for _ in range(6):
        now = clock.now()
        step = lifecycle.compute_transition(node, stored, now=now, config=CONFIG, unobserved=stall)
        if step.phase is not None:
            node = lifecycle.apply_phase(node, step, now=now, allocations=1)
            seen.append((node.status.phase, (now - start).total_seconds()))
            if node.status.phase == "Lost":
                break
            continue
        assert step.requeue_after is not None
        await clock.advance(step.requeue_after)
    assert seen == [("NotReady", 4 + 3), ("Lost", 4 + 3 + 2)]


def test_liveness_holds_a_lease_through_the_replica_s_stall_and_no_longer() -> None:
    cache = cache_mod.Cache(on_change=lambda old, new: None)
    now = at(100)
    node, stored = node_and_lease(now, renewed=-5.0)
    cache.put(node)
    cache.put(stored)
    periods: list[lease.Unobserved] = []
    live = liveness_mod.Liveness(
        cache,
        renewals_mod.Renewals(),
        lease_duration=CONFIG.lease_duration,
        unobserved=lambda: periods,
        stall_max=CONFIG.store_stall_max,
    )
    assert not live.is_live("p1", now)
    periods.append(lease.Unobserved(now - timedelta(seconds=3), now))  # stalled, still going
    assert live.is_live("p1", now)
    assert live.lease_expiry("p1") == now + timedelta(seconds=2)
    assert not live.is_live("p1", now + timedelta(seconds=2))


@pytest.mark.parametrize("value", [-1.0, float("inf"), float("nan")])
def test_a_bad_store_stall_max_names_the_field_and_value(value: float) -> None:
    with pytest.raises(ValueError, match=r"store_stall_max: must be 0 \(off\) or a positive"):
        config_mod.ControlPlaneConfig(store_stall_max=value)


def test_store_stall_max_zero_turns_the_rule_off() -> None:
    off = config_mod.ControlPlaneConfig(
        heartbeat_interval=1.0, lease_duration=4.0, lost_grace=2.0, store_stall_max=0.0
    )
    now = at(100)
    node, stored = node_and_lease(now, renewed=-5.7)
    stall = [lease.Unobserved(now - timedelta(seconds=3.7), now - timedelta(seconds=0.7))]
    step = lifecycle.compute_transition(node, stored, now=now, config=off, unobserved=stall)
    assert step.phase == "NotReady"
