"""Replica membership through a store stall (issue 16): another replica's lease does not run
while this one could not observe the store, so a stall does not make every replica take
every key; a replica that really stopped renewing still leaves, the stall later."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import pytest

from api.resources import lease
from controller.runtime import clock, replicas
from store import base, sqlite


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[base.Store]:
    store = await sqlite.SqliteStore.open(tmp_path / "state.db")
    yield store
    await store.close()


async def test_a_stall_keeps_a_replica_that_renewed_on_time(db: base.Store) -> None:
    fake = clock.FakeClock()
    periods: list[lease.Unobserved] = []

    def replica(name: str) -> replicas.Replicas:
        return replicas.Replicas(
            db,
            fake,
            replica_id=name,
            address=f"{name}:7070",
            lease_seconds=5.0,
            unobserved=lambda: periods,
            stall_max=10.0,
        )

    a, b = replica("replica-a"), replica("replica-b")
    await a.renew()
    await b.renew()
    stalled_from = fake.now() + timedelta(seconds=1)
    await fake.advance(6.0)  # a's lease ran out by the clock; b could not see the store for 3 s
    periods.append(lease.Unobserved(stalled_from, stalled_from + timedelta(seconds=3)))
    await b.renew()
    assert b.members == ["replica-a", "replica-b"]
    await fake.advance(2.5)  # past a's lease + the stall: a really stopped renewing
    await b.renew()
    assert b.members == ["replica-b"]


async def test_without_observations_a_late_replica_leaves_at_its_lease(db: base.Store) -> None:
    fake = clock.FakeClock()
    a = replicas.Replicas(db, fake, replica_id="replica-a", address="a:1", lease_seconds=5.0)
    b = replicas.Replicas(db, fake, replica_id="replica-b", address="b:1", lease_seconds=5.0)
    await a.renew()
    await b.renew()
    await fake.advance(6.0)
    await b.renew()
    assert b.members == ["replica-b"]
