"""The event recorder on a FakeClock and a real store: aggregation in the buffer and in the
store, the TTL, the bound on the buffer, and that recording never waits on or fails with
the store."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from api.resources import event
from controller.runtime import clock as clock_mod
from controller.runtime import recorder as recorder_mod
from store import base, errors, sqlite


class World:
    def __init__(self, store: base.Store, clock: clock_mod.FakeClock) -> None:
        self.store, self.clock = store, clock
        self.counted: list[tuple[str, str]] = []

    def recorder(self, **options: Any) -> recorder_mod.Recorder:
        return recorder_mod.Recorder(
            store=self.store,
            clock=self.clock,
            replica="r1",
            on_recorded=lambda kind, reason: self.counted.append((kind, reason)),
            **options,
        )

    async def tick(self, rec: recorder_mod.Recorder, seconds: float) -> None:
        """Advance the clock by `seconds`, then wait for the flush that falls due (its
        writes run on the store's thread, which the FakeClock does not wait for)."""
        seen = rec.flushed.value
        await self.clock.advance(seconds)
        await rec.flushed.wait_past(seen)

    async def events(self, key: str = "Network/digits") -> list[event.Event]:
        return await base.list_all(self.store, event.Event, index=("object", key))


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    clock = clock_mod.FakeClock()
    store = await sqlite.SqliteStore.open(tmp_path / "state.db", clock=clock.now)
    try:
        yield World(store, clock)
    finally:
        await store.close()


async def test_repeats_are_one_record_with_a_count_in_the_buffer_and_in_the_store(world):
    rec = world.recorder(flush_every=1.0)
    first = world.clock.now()
    for _ in range(3):
        rec.normal("Network", "digits", "Placed", "placed dense-1.0 on pnode-a")
    rec.warning("Network", "digits", "Unschedulable", "0/3 pnodes available")
    assert rec.waiting() == 2
    rec.start()
    try:
        await world.tick(rec, 1.0)
        found = {e.reason: e for e in await world.events()}
        assert sorted(found) == ["Placed", "Unschedulable"]
        assert (found["Placed"].count, found["Placed"].type) == (3, "Normal")
        assert found["Unschedulable"].type == "Warning"
        assert found["Placed"].expire_time == first + rec_ttl(rec)

        await world.tick(rec, 30.0)
        rec.normal("Network", "digits", "Placed", "placed dense-1.0 on pnode-a")
        await world.tick(rec, 1.0)
        placed = next(e for e in await world.events() if e.reason == "Placed")
        assert placed.count == 4
        assert placed.first_timestamp == first
        assert placed.last_timestamp == world.clock.now() - seconds(1.0)
    finally:
        await rec.stop()
    assert world.counted == [("Normal", "Placed")] * 3 + [("Warning", "Unschedulable")] + [
        ("Normal", "Placed")
    ]


async def test_an_event_expires_ttl_after_its_last_occurrence(world):
    rec = world.recorder(ttl=60.0)
    rec.warning("PNode", "pnode-a", "Fenced", "lease expired")
    await rec.flush()
    await world.clock.advance(59.0)
    assert [e.count for e in await world.events("PNode/pnode-a")] == [1]
    await world.clock.advance(1.0)
    assert await world.events("PNode/pnode-a") == []
    rec.warning("PNode", "pnode-a", "Fenced", "lease expired")
    await rec.flush()
    again = await world.events("PNode/pnode-a")
    assert [(e.count, e.first_timestamp) for e in again] == [(1, world.clock.now())]


async def test_the_buffer_is_bounded_and_repeats_of_a_waiting_event_still_merge(world):
    rec = world.recorder(capacity=2)
    for i in range(5):
        rec.normal("Job", f"job-{i}", "Attempt", "attempt 1")
    rec.normal("Job", "job-0", "Attempt", "attempt 1")
    assert (rec.waiting(), rec.dropped) == (2, 3)
    await rec.flush()
    written = await base.list_all(world.store, event.Event)
    assert sorted((e.involved_object.name, e.count) for e in written) == [
        ("job-0", 2),
        ("job-1", 1),
    ]


class StuckStore:
    """A store whose every call waits until released, then fails."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.calls = 0

    async def get(self, kind: Any, name: str) -> Any:
        self.calls += 1
        await self.release.wait()
        raise errors.Unavailable("store down")

    async def create(self, obj: Any) -> Any:
        raise AssertionError("never reached")

    async def update(self, obj: Any) -> Any:
        raise AssertionError("never reached")


async def test_recording_never_waits_on_the_store_and_a_failed_write_is_dropped(world):
    stuck = StuckStore()
    rec = recorder_mod.Recorder(store=stuck, clock=world.clock, replica="r1")  # type: ignore[arg-type]
    rec.warning("PNode", "pnode-a", "Fenced", "lease expired")
    rec.start()
    await world.clock.advance(1.0)  # the flush now waits on the store
    assert stuck.calls == 1
    for i in range(100):  # meanwhile, recording goes on at once
        rec.normal("Network", "digits", "Placed", f"slot {i}")
    assert rec.waiting() == 100
    seen = rec.flushed.value
    stuck.release.set()
    await rec.flushed.wait_past(seen)
    assert rec.failed == 1
    # Malformed events are dropped, not raised into the caller.
    rec.normal("Network", "digits", "not camel case", "x")
    rec.normal("Network", "Bad\nName", "Placed", "x")
    assert rec.waiting() == 100
    rec._store = world.store  # the store is back
    await rec.stop()
    assert len(await world.events()) == 100


def seconds(s: float) -> Any:
    from datetime import timedelta

    return timedelta(seconds=s)


def rec_ttl(rec: recorder_mod.Recorder) -> Any:
    return seconds(rec.ttl)
