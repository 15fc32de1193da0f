"""Signal: a counter that waiters block on until it moves past what they saw.

The waiter reads `value` before it reads the state the signal guards, so a change that
lands between the two is never missed: the value has moved, and `wait_past` returns at once.

A wait with a bound (`within=`) times out on the signal's clock, not on asyncio's: a test
driving a FakeClock past a lease expiry wakes a watch exactly then, with no real time spent.
"""

from __future__ import annotations

import asyncio
import contextlib

from controller.runtime import clock as clock_mod


class Signal:
    def __init__(self, clock: clock_mod.Clock) -> None:
        self.value = 0
        self._clock = clock
        self._changed = asyncio.Event()

    def bump(self) -> None:
        self.value += 1
        self._changed.set()
        self._changed = asyncio.Event()

    async def wait_past(self, seen: int, *, within: float | None = None) -> int:
        """The value once it differs from `seen`, or after `within` seconds on the clock at
        the latest (None: no bound)."""
        if self.value != seen:
            return self.value
        event = self._changed
        if within is None:
            await event.wait()
            return self.value
        changed = asyncio.ensure_future(event.wait())
        timer = asyncio.ensure_future(self._clock.sleep(within))
        try:
            await asyncio.wait({changed, timer}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (changed, timer):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        return self.value
