"""Time, passed in: the real clock for the process, a fake one that tests drive by hand.

Everything timed in the controller (queue delays, backoff, resyncs, shutdown grace) asks a
`Clock` instead of reading `time` or calling `asyncio.sleep`, so a test can move time forward
by an hour in a microsecond and every timer fires in a known order.

Driving a FakeClock: `await clock.advance(s)`. It first lets every runnable task run (so a
task that is about to sleep has registered), then wakes sleepers one at a time in deadline
order, with the clock reading exactly each sleeper's deadline, and lets the loop run until
nothing is runnable before waking the next. A task woken by `advance` that sleeps again with
a deadline inside the advanced span is woken in the same call, as real time would. Tasks
waiting on real I/O or threads are not waited for; await what they signal instead.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Protocol

#: Loop turns `settle` takes when the loop does not expose its ready queue (not CPython's
#: pure-Python loop, e.g. uvloop). Enough for the short chains of hand-offs our code makes.
FALLBACK_SETTLE_TURNS = 100


class Clock(Protocol):
    def monotonic(self) -> float:
        """Seconds on a clock that never goes back; only differences mean anything."""
        ...

    def now(self) -> datetime:
        """Wall time, timezone-aware UTC: for timestamps people read and records store."""
        ...

    async def sleep(self, seconds: float) -> None: ...


class SystemClock:
    def monotonic(self) -> float:
        return time.monotonic()

    def now(self) -> datetime:
        return datetime.now(UTC)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))


@dataclass(order=True)
class _Sleeper:
    deadline: float
    seq: int
    future: asyncio.Future[None] = field(compare=False)


class FakeClock:
    """A clock that moves only when told; sleeping costs no real time."""

    def __init__(
        self,
        *,
        start: float = 1000.0,
        wall_start: datetime = datetime(2030, 1, 1, tzinfo=UTC),
        max_settle_turns: int = 10_000,
    ) -> None:
        if wall_start.tzinfo is None:
            raise ValueError(f"FakeClock wall_start={wall_start!r}: must be timezone-aware")
        self._now = start
        self._start = start
        self._wall_start = wall_start
        self._max_settle_turns = max_settle_turns
        self._sleepers: list[_Sleeper] = []
        self._seq = itertools.count()

    def monotonic(self) -> float:
        return self._now

    def now(self) -> datetime:
        return self._wall_start + timedelta(seconds=self._now - self._start)

    async def sleep(self, seconds: float) -> None:
        deadline = self._now + seconds
        if not seconds > 0 or deadline <= self._now:
            # Still a suspension point, as asyncio.sleep(0) is.
            await asyncio.sleep(0)
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, _Sleeper(deadline, next(self._seq), future))
        # A cancelled sleeper's future is cancelled with it; advance skips it.
        await future

    def next_deadline(self) -> float | None:
        """When the earliest live sleeper wakes, or None if nothing sleeps."""
        self._drop_cancelled()
        return self._sleepers[0].deadline if self._sleepers else None

    async def advance(self, seconds: float) -> None:
        if not seconds >= 0:
            raise ValueError(f"FakeClock.advance seconds={seconds!r}: must be >= 0")
        target = self._now + seconds
        await self.settle()
        while True:
            self._drop_cancelled()
            if not self._sleepers or self._sleepers[0].deadline > target:
                break
            sleeper = heapq.heappop(self._sleepers)
            self._now = max(self._now, sleeper.deadline)
            sleeper.future.set_result(None)
            await self.settle()
        self._now = target
        await self.settle()

    async def settle(self) -> None:
        """Return once no task is runnable: everything woken has run to its next wait.

        asyncio has no public "is the loop idle" question; CPython's loop keeps runnable
        callbacks in `_ready`, and when this task resumes with that queue empty nothing else
        can run. A task that never stops being runnable (a busy loop) makes this raise,
        which in a test is the bug to find.
        """
        ready = getattr(asyncio.get_running_loop(), "_ready", None)
        if ready is None:
            for _ in range(FALLBACK_SETTLE_TURNS):
                await asyncio.sleep(0)
            return
        for _ in range(self._max_settle_turns):
            await asyncio.sleep(0)
            if not ready:
                return
        raise RuntimeError(
            f"FakeClock.settle: the event loop still had runnable callbacks after "
            f"{self._max_settle_turns} turns; some task is busy-looping without waiting"
        )

    def _drop_cancelled(self) -> None:
        while self._sleepers and self._sleepers[0].future.done():
            heapq.heappop(self._sleepers)
