"""The fake clock and the work queue: client-go's guarantees, with time driven by hand."""

from __future__ import annotations

import asyncio
import random

import pytest

from controller.runtime import clock as clocks
from controller.runtime import workqueue


@pytest.fixture
def clock() -> clocks.FakeClock:
    return clocks.FakeClock()


def make_queue(clock: clocks.FakeClock, **backoff: float) -> workqueue.WorkQueue:
    return workqueue.WorkQueue(clock, rng=random.Random(42), backoff=workqueue.Backoff(**backoff))


async def drain(queue: workqueue.WorkQueue) -> list[str]:
    """Every key ready now, in order, each marked done."""
    keys = []
    while len(queue):
        key = await queue.get()
        queue.done(key)
        keys.append(key)
    return keys


# --- the fake clock ------------------------------------------------------------------------


async def test_advance_wakes_exactly_the_due_sleepers_in_deadline_order(clock) -> None:
    woken: list[tuple[str, float]] = []

    async def sleeper(name: str, seconds: float) -> None:
        await clock.sleep(seconds)
        woken.append((name, clock.monotonic()))

    start = clock.monotonic()
    tasks = [asyncio.create_task(sleeper(n, s)) for n, s in [("c", 3), ("a", 1), ("b", 2)]]
    await clock.advance(2.5)
    assert woken == [("a", start + 1), ("b", start + 2)]
    assert not tasks[0].done()
    await clock.advance(0.5)
    assert [name for name, _ in woken] == ["a", "b", "c"]
    assert all(task.done() for task in tasks)


async def test_a_task_that_sleeps_again_inside_the_advanced_span_is_woken_again(clock) -> None:
    ticks: list[float] = []

    async def ticker() -> None:
        while True:
            await clock.sleep(1)
            ticks.append(clock.monotonic() - 1000)

    task = asyncio.create_task(ticker())
    await clock.advance(3.5)
    assert ticks == [1, 2, 3]
    task.cancel()


async def test_cancelled_sleepers_are_skipped_and_wall_time_follows(clock) -> None:
    wall = clock.now()
    cancelled = asyncio.create_task(clock.sleep(1))
    kept = asyncio.create_task(clock.sleep(2))
    await clock.settle()
    cancelled.cancel()
    await clock.advance(2)
    assert cancelled.cancelled()
    assert kept.done()
    assert clock.next_deadline() is None
    assert (clock.now() - wall).total_seconds() == 2


async def test_settle_reports_a_busy_loop() -> None:
    clock = clocks.FakeClock(max_settle_turns=50)

    spins = 0

    async def spin() -> None:
        nonlocal spins
        while True:
            spins += 1
            await asyncio.sleep(0)

    task = asyncio.create_task(spin())
    with pytest.raises(RuntimeError, match="busy-looping"):
        await clock.settle()
    assert spins >= 50
    task.cancel()


# --- de-duplication and processing ---------------------------------------------------------


async def test_add_deduplicates_a_queued_key(clock) -> None:
    queue = make_queue(clock)
    for key in ["a", "b", "a", "a", "b", "c"]:
        queue.add(key)
    assert len(queue) == 3
    assert await drain(queue) == ["a", "b", "c"]


async def test_a_key_being_processed_is_not_handed_out_and_is_requeued_at_done(clock) -> None:
    queue = make_queue(clock)
    queue.add("a")
    key = await queue.get()
    queue.add("a")
    queue.add("a")
    assert len(queue) == 0, "a key held by a worker must not be queued a second time"
    second = asyncio.create_task(queue.get())
    await clock.settle()
    assert not second.done()
    queue.done(key)
    assert await asyncio.wait_for(second, timeout=5) == "a"
    queue.done("a")
    assert len(queue) == 0, "the two adds during processing make one requeue"


async def test_done_without_a_new_add_does_not_requeue(clock) -> None:
    queue = make_queue(clock)
    queue.add("a")
    queue.done(await queue.get())
    assert len(queue) == 0
    assert queue.processing == 0


async def test_a_cancelled_getter_passes_its_wakeup_on(clock) -> None:
    queue = make_queue(clock)
    first = asyncio.create_task(queue.get())
    second = asyncio.create_task(queue.get())
    await clock.settle()
    queue.add("a")  # wakes `first`...
    first.cancel()  # ...which is cancelled before it can take the key
    assert await asyncio.wait_for(second, timeout=5) == "a"
    assert first.cancelled()


# --- delayed adds --------------------------------------------------------------------------


async def test_add_after_releases_keys_in_deadline_order(clock) -> None:
    queue = make_queue(clock)
    queue.add_after("slow", 3)
    queue.add_after("fast", 1)
    queue.add_after("mid", 2)
    assert (len(queue), queue.delayed) == (0, 3)
    await clock.advance(0.999)
    assert len(queue) == 0
    await clock.advance(0.001)
    assert await drain(queue) == ["fast"]
    await clock.advance(2)
    assert await drain(queue) == ["mid", "slow"]
    assert queue.delayed == 0


@pytest.mark.parametrize("delays", [(5, 2), (2, 5)])
async def test_scheduling_a_key_twice_keeps_the_earlier_deadline(clock, delays) -> None:
    queue = make_queue(clock)
    for delay in delays:
        queue.add_after("a", delay)
    await clock.advance(1.9)
    assert len(queue) == 0
    await clock.advance(0.1)
    assert await drain(queue) == ["a"]
    await clock.advance(10)
    assert len(queue) == 0, "the later deadline must not fire as well"
    assert clock.next_deadline() is None, "the timer task must not outlive its work"


async def test_add_after_zero_adds_now_and_a_fired_key_is_deduplicated(clock) -> None:
    queue = make_queue(clock)
    queue.add_after("now", 0)
    queue.add("a")
    queue.add_after("a", 1)
    assert len(queue) == 2
    await clock.advance(1)
    assert await drain(queue) == ["now", "a"]


# --- rate limiting -------------------------------------------------------------------------


async def pending_delay(clock: clocks.FakeClock) -> float:
    """How long the queue's timer sleeps: the delay it gave the last rate-limited key."""
    await clock.settle()
    deadline = clock.next_deadline()
    assert deadline is not None
    return deadline - clock.monotonic()


async def test_backoff_grows_exponentially_within_jitter_bounds_up_to_the_cap(clock) -> None:
    base, cap, jitter = 0.005, 1.0, 0.2
    queue = make_queue(clock, base=base, cap=cap, jitter=jitter)
    delays = []
    for failures in range(14):
        queue.add_rate_limited("k")
        delay = await pending_delay(clock)
        ceiling = min(cap, base * 2**failures)
        assert ceiling * (1 - jitter) - 1e-9 <= delay <= ceiling + 1e-9, failures
        await clock.advance(delay)
        assert await drain(queue) == ["k"]
        delays.append(delay)
    assert queue.num_requeues("k") == 14
    assert max(delays) <= cap
    assert delays[-1] > cap * (1 - jitter) - 1e-9, "the cap is reached and held"
    assert len({round(d / min(cap, base * 2**i), 9) for i, d in enumerate(delays)}) > 1, (
        "jitter never varied the delay"
    )


async def test_forget_resets_the_backoff(clock) -> None:
    queue = make_queue(clock, base=1, cap=100, jitter=0)
    for _ in range(5):
        queue.add_rate_limited("k")
        await clock.advance(await pending_delay(clock))
        await drain(queue)
    queue.add_rate_limited("k")
    assert await pending_delay(clock) == 32
    await clock.advance(32)
    await drain(queue)
    queue.forget("k")
    assert queue.num_requeues("k") == 0
    queue.add_rate_limited("k")
    assert await pending_delay(clock) == 1


async def test_backoff_is_per_key(clock) -> None:
    queue = make_queue(clock, base=1, cap=100, jitter=0)
    for _ in range(3):
        queue.add_rate_limited("busy")
        await clock.advance(await pending_delay(clock))
        await drain(queue)
    queue.add_rate_limited("fresh")
    assert await pending_delay(clock) == 1


def test_the_same_seed_gives_the_same_delays() -> None:
    backoff = workqueue.Backoff()
    one, two = random.Random(3), random.Random(3)
    assert [backoff.delay(n, one) for n in range(30)] == [backoff.delay(n, two) for n in range(30)]


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [({"base": 0}, "base"), ({"base": 2, "cap": 1}, "cap"), ({"jitter": 1}, "jitter")],
)
def test_backoff_rejects_bad_settings_by_name(kwargs, field) -> None:
    with pytest.raises(ValueError, match=f"Backoff.{field}="):
        workqueue.Backoff(**kwargs)


# --- shutdown ------------------------------------------------------------------------------


async def test_shutdown_wakes_every_waiting_get_and_stops_handing_out_keys(clock) -> None:
    queue = make_queue(clock)
    getters = [asyncio.create_task(queue.get()) for _ in range(3)]
    queue.add_after("later", 5)
    await clock.settle()
    queue.shutdown()
    await clock.settle()
    assert clock.next_deadline() is None, "shutdown must stop the timer"
    results = await asyncio.wait_for(asyncio.gather(*getters, return_exceptions=True), timeout=5)
    assert all(isinstance(r, workqueue.ShutDown) for r in results)
    queue.add("a")
    queue.add_after("b", 0)
    queue.add_rate_limited("c")
    with pytest.raises(workqueue.ShutDown):
        await queue.get()
    await clock.advance(10)
    assert (len(queue), queue.delayed) == (0, 0)


async def test_shutdown_does_not_requeue_a_dirty_key_at_done(clock) -> None:
    queue = make_queue(clock)
    queue.add("a")
    key = await queue.get()
    queue.add("a")
    queue.shutdown()
    queue.done(key)
    assert len(queue) == 0
