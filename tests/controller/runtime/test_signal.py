"""Signal: waiters wake on a bump, and a bounded wait times out on the signal's clock."""

from __future__ import annotations

import asyncio

from controller.runtime import clock as clocks
from controller.runtime import signal as signal_mod


async def test_a_bounded_wait_times_out_when_the_fake_clock_passes_the_bound() -> None:
    clock = clocks.FakeClock()
    signal = signal_mod.Signal(clock)
    waiter = asyncio.ensure_future(signal.wait_past(0, within=5.0))
    await clock.advance(4.999)
    assert not waiter.done(), "timed out before the clock reached the bound"
    await clock.advance(0.001)
    assert waiter.done()
    assert await waiter == 0  # timed out, unchanged


async def test_a_bump_wins_over_the_bound_and_leaves_no_timer_behind() -> None:
    clock = clocks.FakeClock()
    signal = signal_mod.Signal(clock)
    waiter = asyncio.ensure_future(signal.wait_past(0, within=5.0))
    await clock.settle()
    assert clock.next_deadline() is not None
    signal.bump()
    assert await waiter == 1
    assert clock.next_deadline() is None, "the timer of a finished wait still sleeps"


async def test_an_unbounded_wait_needs_a_bump_and_a_moved_value_returns_at_once() -> None:
    clock = clocks.FakeClock()
    signal = signal_mod.Signal(clock)
    waiter = asyncio.ensure_future(signal.wait_past(0))
    await clock.advance(3600)
    assert not waiter.done()
    signal.bump()
    assert await waiter == 1
    assert await signal.wait_past(0, within=1.0) == 1


async def test_a_cancelled_waiter_leaves_no_timer_behind() -> None:
    clock = clocks.FakeClock()
    waiter = asyncio.ensure_future(signal_mod.Signal(clock).wait_past(0, within=5.0))
    await clock.settle()
    waiter.cancel()
    await asyncio.gather(waiter, return_exceptions=True)
    assert clock.next_deadline() is None
