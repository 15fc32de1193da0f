"""The simulator's clock: it moves only when the event scheduler sets it, and nothing sleeps.

It implements `controller.runtime.clock.Clock`. The simulator calls every part directly
between events, so a part that tries to sleep on it is a wiring mistake, and says so.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

#: Simulated time 0 as wall time (any fixed instant: records store it).
EPOCH = datetime(2030, 1, 1, tzinfo=UTC)


class SimClock:
    def __init__(self) -> None:
        self._now = 0.0

    def set(self, seconds: float) -> None:
        if seconds < self._now:
            raise ValueError(f"SimClock.set({seconds}): time goes forward from {self._now}")
        self._now = seconds

    def monotonic(self) -> float:
        return self._now

    def now(self) -> datetime:
        return EPOCH + timedelta(seconds=self._now)

    def wall(self) -> datetime:
        """`now`, as the store's clock callable."""
        return self.now()

    async def sleep(self, seconds: float) -> None:
        raise RuntimeError(
            f"SimClock.sleep({seconds}): nothing sleeps in the simulator; schedule an event"
        )
