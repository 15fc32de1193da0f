"""Replica membership and rendezvous sharding: every key has exactly one owner among the
live replicas, a dead replica's share moves to the survivors, and only that share moves."""

from __future__ import annotations

from collections import Counter

import pytest

from api.resources import orchestrator
from controller.runtime import clock, replicas
from store import base, sqlite

KEYS = [f"network-{i}" for i in range(300)]


def test_rendezvous_is_deterministic_and_total() -> None:
    members = ["a", "b", "c"]
    owners = [replicas.rendezvous_owner(k, members) for k in KEYS]
    assert owners == [replicas.rendezvous_owner(k, list(reversed(members))) for k in KEYS]
    counts = Counter(owners)
    assert set(counts) == set(members)
    assert min(counts.values()) > len(KEYS) / len(members) / 2  # no replica starved
    assert replicas.rendezvous_owner("x", []) is None


def test_only_the_departed_replicas_keys_move() -> None:
    before = {k: replicas.rendezvous_owner(k, ["a", "b", "c"]) for k in KEYS}
    after = {k: replicas.rendezvous_owner(k, ["a", "c"]) for k in KEYS}
    moved = {k for k in KEYS if before[k] != after[k]}
    assert moved == {k for k in KEYS if before[k] == "b"}


@pytest.fixture
async def db(tmp_path):
    store = await sqlite.SqliteStore.open(tmp_path / "state.db")
    yield store
    await store.close()


def _replica(db, fake: clock.FakeClock, name: str, changes: list[list[str]] | None = None):
    return replicas.Replicas(
        db,
        fake,
        replica_id=name,
        address=f"{name}:7070",
        lease_seconds=5.0,
        on_membership_change=None if changes is None else changes.append,
    )


async def test_live_replicas_divide_keys_disjointly_and_completely(db) -> None:
    fake = clock.FakeClock()
    a, b = _replica(db, fake, "replica-a"), _replica(db, fake, "replica-b")
    await a.renew()
    await b.renew()
    await a.renew()
    assert a.members == b.members == ["replica-a", "replica-b"]
    owned_a = {k for k in KEYS if a.owns(k)}
    owned_b = {k for k in KEYS if b.owns(k)}
    assert owned_a.isdisjoint(owned_b)
    assert owned_a | owned_b == set(KEYS)
    assert owned_a
    assert owned_b


async def test_a_dead_replicas_share_is_taken_over_after_its_lease(db) -> None:
    fake = clock.FakeClock()
    changes: list[list[str]] = []
    a, b = _replica(db, fake, "replica-a", changes), _replica(db, fake, "replica-b")
    await a.renew()
    await b.renew()
    await a.renew()
    assert not all(a.owns(k) for k in KEYS)
    # b dies without releasing its lease: a keeps renewing, time passes.
    for _ in range(4):
        await fake.advance(5.0 / 3)
        await a.renew()
    assert a.members == ["replica-a"]
    assert all(a.owns(k) for k in KEYS)
    assert changes[-1] == ["replica-a"]


async def test_stop_releases_the_lease_at_once(db) -> None:
    fake = clock.FakeClock()
    a, b = _replica(db, fake, "replica-a"), _replica(db, fake, "replica-b")
    await a.renew()
    await b.renew()
    await b.stop()
    await a.renew()
    assert a.members == ["replica-a"]


async def test_unknown_membership_owns_everything(db) -> None:
    fake = clock.FakeClock()
    a = _replica(db, fake, "replica-a")
    assert all(a.owns(k) for k in KEYS)


async def test_long_dead_records_are_garbage_collected(db) -> None:
    fake = clock.FakeClock()
    a, b = _replica(db, fake, "replica-a"), _replica(db, fake, "replica-b")
    await b.renew()
    await fake.advance(5.0 * (replicas.FORGET_AFTER_LEASES + 1))
    await a.renew()
    names = [r.name for r in await base.list_all(db, orchestrator.Orchestrator)]
    assert names == ["replica-a"]


async def test_a_record_taken_by_someone_else_is_recovered(db) -> None:
    fake = clock.FakeClock()
    a = _replica(db, fake, "replica-a")
    await a.renew()
    current = await db.get(orchestrator.Orchestrator, "replica-a")
    await db.update(current)  # bumps the version under a's cached copy
    await a.renew()
    assert a.members == ["replica-a"]
