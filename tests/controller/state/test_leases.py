"""LeaseKeeper: renewals reach the store coalesced, batched, never backwards and never for a
stale incarnation. A fake clock drives time; the store is a real SQLite file."""

from __future__ import annotations

import asyncio
import math
from datetime import timedelta

import pytest

from api.resources import lease, meta, pnode
from controller import config as config_mod
from controller.runtime import clock as clock_mod
from controller.state import leases as leases_mod
from controller.state import view as view_mod
from store import base, sqlite
from tests.support import wait

CONFIG = config_mod.ControlPlaneConfig()  # lease 4 s: persist every 4/3 s, tick every 4/6 s


class CountingStore:
    """The real store, counting transactions (the thing under test is how few there are)."""

    def __init__(self, inner: base.Store) -> None:
        self.inner = inner
        self.transactions = 0

    def __getattr__(self, name):
        return getattr(self.inner, name)

    async def transact(self, ops):
        self.transactions += 1
        return await self.inner.transact(ops)


@pytest.fixture
async def env(tmp_path):
    db = await sqlite.SqliteStore.open(tmp_path / "state.db")
    clock = clock_mod.FakeClock()
    store = CountingStore(db)
    view = view_mod.View(store, clock, config=CONFIG)
    keeper = leases_mod.LeaseKeeper(store, clock, view=view, config=CONFIG)
    yield store, clock, view, keeper
    await keeper.stop()
    await db.close()


async def register(store, view, clock, names, *, incarnation: int = 1) -> None:
    """PNodes and their leases as Register leaves them (renewed now)."""
    ops: list[base.Op] = []
    for name in names:
        node = pnode.PNode(
            metadata=meta.ObjectMeta(name=name), spec=pnode.PNodeSpec(address="10.0.0.1:7100")
        )
        node.status.incarnation = incarnation
        ops.append(base.Create(node))
        ops.append(
            base.Create(
                lease.PNodeLease(
                    metadata=meta.ObjectMeta(name=name),
                    spec=lease.LeaseSpec(
                        incarnation=incarnation,
                        renew_time=clock.now(),
                        duration_seconds=CONFIG.lease_duration,
                    ),
                )
            )
        )
    for start in range(0, len(ops), base.MAX_TRANSACTION_OPS):
        await store.inner.transact(ops[start : start + base.MAX_TRANSACTION_OPS])
    await view.refresh()


async def test_a_hundred_heartbeats_within_one_lease_cost_at_most_three_writes(env) -> None:
    store, clock, view, keeper = env
    await register(store, view, clock, ["p1"])
    before = (await store.get(lease.PNodeLease, "p1")).metadata.resource_version
    lease_s = CONFIG.lease_duration
    tick = lease_s / 6
    next_tick = tick
    elapsed = 0.0
    worst_lag = 0.0
    for _ in range(100):
        await clock.advance(lease_s / 100)
        elapsed += lease_s / 100
        keeper.note("p1", 1, clock.now())
        if elapsed + 1e-9 >= next_tick:  # what the run loop does every lease/6
            next_tick += tick
            await keeper.flush()
        persisted = (await store.get(lease.PNodeLease, "p1")).spec.renew_time
        worst_lag = max(worst_lag, (clock.now() - persisted).total_seconds())
    writes = (await store.get(lease.PNodeLease, "p1")).metadata.resource_version - before
    assert 1 <= writes <= math.ceil(lease_s / CONFIG.lease_persist_every)
    # The persisted renewal never lags the newest real one by half a lease or more.
    assert worst_lag < lease_s / 2


async def test_two_hundred_fifty_pnodes_are_flushed_in_three_transactions(env) -> None:
    store, clock, view, keeper = env
    names = [f"p{i:03d}" for i in range(250)]
    await register(store, view, clock, names)
    await clock.advance(CONFIG.lease_persist_every)
    for name in names:
        keeper.note(name, 1, clock.now())
    store.transactions = 0
    assert await keeper.flush() == 250
    assert store.transactions <= 3
    for record in await base.list_all(store.inner, lease.PNodeLease):
        assert record.spec.renew_time == clock.now()
        assert view.leases[record.name].metadata.resource_version == 2  # written through
    assert keeper.pending() == 0


async def test_renewals_younger_than_a_third_of_a_lease_wait(env) -> None:
    store, clock, view, keeper = env
    await register(store, view, clock, ["p1"])
    await clock.advance(CONFIG.lease_persist_every / 2)
    keeper.note("p1", 1, clock.now())
    assert await keeper.flush() == 0
    assert keeper.renewed_at("p1", 1) == clock.now()
    assert keeper.renewed_at("p1", 2) is None
    assert await keeper.flush(force=True) == 1
    assert (await store.get(lease.PNodeLease, "p1")).spec.renew_time == clock.now()


async def test_a_conflicting_batch_falls_back_to_single_writes_never_moving_backwards(
    env,
) -> None:
    store, clock, view, keeper = env
    names = ["p1", "p2", "p3", "p4"]
    await register(store, view, clock, names)
    await clock.advance(CONFIG.lease_persist_every)
    ours = clock.now()
    for name in names:
        keeper.note(name, 1, ours)
    # Another replica renewed p2 later than we did, behind our view's back.
    theirs = ours + timedelta(seconds=1)
    other = await store.inner.get(lease.PNodeLease, "p2")
    other.spec.renew_time = theirs
    await store.inner.update(other)

    assert await keeper.flush() == 3
    stored = {r.name: r for r in await base.list_all(store.inner, lease.PNodeLease)}
    assert stored["p2"].spec.renew_time == theirs  # not moved back to ours
    for name in ("p1", "p3", "p4"):
        assert stored[name].spec.renew_time == ours
    assert view.leases["p2"].spec.renew_time == theirs  # the re-read reached the view
    assert keeper.pending() == 0


async def test_renewals_of_a_stale_incarnation_are_never_written(env) -> None:
    store, clock, view, keeper = env
    await register(store, view, clock, ["p1"], incarnation=2)
    await clock.advance(CONFIG.lease_duration)
    keeper.note("p1", 1, clock.now())  # an agent fenced since: its renewal is moot
    assert await keeper.flush(force=True) == 0
    assert keeper.pending() == 0
    record = await store.get(lease.PNodeLease, "p1")
    assert (record.metadata.resource_version, record.spec.incarnation) == (1, 2)


async def test_a_renewal_for_an_incarnation_the_view_has_not_seen_waits(env) -> None:
    store, clock, view, keeper = env
    await register(store, view, clock, ["p1"])
    await clock.advance(CONFIG.lease_duration)
    keeper.note("p1", 2, clock.now())
    assert await keeper.flush(force=True) == 0
    assert keeper.pending() == 1  # kept until the view catches up with the Register


async def test_renewals_of_deleted_pnodes_are_dropped(env) -> None:
    _store, clock, _view, keeper = env
    keeper.note("gone", 1, clock.now())
    assert await keeper.flush(force=True) == 0
    assert keeper.pending() == 0


async def test_the_run_loop_persists_on_its_own_and_stop_flushes_the_rest(env) -> None:
    store, clock, view, keeper = env
    await register(store, view, clock, ["p1", "p2"])
    keeper.start()
    await clock.advance(CONFIG.lease_persist_every)
    keeper.note("p1", 1, clock.now())
    await clock.advance(CONFIG.lease_duration / 6)  # the next tick
    # The write itself runs on the store's thread: wait for it, not for time to pass.
    await wait.until(
        lambda: store.get(lease.PNodeLease, "p1"),
        within=10,
        what="the run loop to persist the renewal",
        accept=lambda stored: stored.metadata.resource_version >= 2,
    )
    keeper.note("p2", 1, clock.now())  # after the last tick: only stop() writes it
    await keeper.stop()
    assert (await store.get(lease.PNodeLease, "p2")).spec.renew_time == clock.now()


# -- one renewal store -----------------------------------------------------------------------


async def test_the_view_and_the_keeper_read_one_renewal_store(env) -> None:
    """A noted renewal counts for the view's liveness at once; persisting it removes it from
    the store and the stored lease takes over, so liveness does not move."""
    store, clock, view, keeper = env
    await register(store, view, clock, ["p1"])
    assert keeper._renewals is view.renewals, "two stores of unpersisted renewals"
    await clock.advance(CONFIG.lease_persist_every)
    keeper.note("p1", 1, clock.now())
    expiry = clock.now() + timedelta(seconds=CONFIG.lease_duration)
    assert view.lease_expiry("p1") == expiry
    assert view.renewals.at("p1", 1) == clock.now()
    assert await keeper.flush() == 1
    assert view.renewals.at("p1", 1) is None
    assert keeper.pending() == 0
    assert view.lease_expiry("p1") == expiry


async def test_a_renewal_noted_while_a_flush_writes_is_kept(env) -> None:
    store, clock, view, keeper = env
    await register(store, view, clock, ["p1"])
    await clock.advance(CONFIG.lease_persist_every)
    keeper.note("p1", 1, clock.now())
    written_at = clock.now()
    flushing = asyncio.ensure_future(keeper.flush())
    await asyncio.sleep(0)  # the flush has taken its batch and awaits the store
    assert not flushing.done()
    later = written_at + timedelta(seconds=0.5)
    keeper.note("p1", 1, later)
    assert await flushing == 1
    assert (await store.get(lease.PNodeLease, "p1")).spec.renew_time == written_at
    assert view.renewals.at("p1", 1) == later, "a newer renewal was dropped with the old one"
    assert view.lease_expiry("p1") == later + timedelta(seconds=CONFIG.lease_duration)


# -- urgent renewals -------------------------------------------------------------------------


def test_only_a_renewal_half_a_lease_past_the_stored_one_is_urgent() -> None:
    stored = clock_mod.FakeClock().now()
    half = timedelta(seconds=CONFIG.lease_duration / 2)
    assert leases_mod.urgent(stored, stored + half, lease_duration=CONFIG.lease_duration)
    assert not leases_mod.urgent(
        stored, stored + half - timedelta(milliseconds=1), lease_duration=CONFIG.lease_duration
    )


async def test_a_renewal_taken_over_from_a_silent_replica_is_written_without_waiting(env) -> None:
    """A PNode whose heartbeats come here after another replica stopped answering, its stored
    lease already half a lease old: written at once, not at the next round, so the stored
    lease does not run out while the PNode heartbeats (the soak's NotReady blips)."""
    store, clock, view, keeper = env
    await register(store, view, clock, ["p1", "p2"])
    keeper.start()
    await asyncio.sleep(0)  # the loop now waits for its round
    # Between two rounds (every lease/6): the next is lease/12 away and the clock stays here.
    await clock.advance(CONFIG.lease_duration / 2 + CONFIG.lease_duration / 12)
    for _ in range(20):
        await asyncio.sleep(0)  # the round the advance passed has run (nothing was due)
    keeper.note("p1", 1, clock.now())  # half a lease past the stored renewal: written now
    await wait.until(
        lambda: store.get(lease.PNodeLease, "p1"),
        within=10,
        what="the urgent renewal to be persisted",
        accept=lambda stored: stored.spec.renew_time == clock.now(),
    )
    keeper.note("p2", 1, clock.now() - timedelta(seconds=CONFIG.lease_duration / 2 - 0.01))
    assert not keeper._urgent.is_set()  # under half a lease: waits for its round
