"""A work queue of keys with client-go's guarantees, for one reconcile loop.

Why these rules:

- A key is queued at most once however many events name it (`add` de-duplicates): a loop
  re-reads state anyway, so ten events before a worker gets to the key cost one reconcile.
- A key a worker holds (between `get` and `done`) is never handed to a second worker. If it
  is added meanwhile, it is marked dirty and queued again at `done`, so the change that
  arrived mid-reconcile is not lost and two workers never race on one record.
- `add_after` is a timer, not a queue entry: the key joins the queue when its deadline
  passes; scheduling a key twice keeps the earlier deadline. One timer task, sleeping on the
  injected clock until the earliest deadline, drives every delayed key.
- `add_rate_limited` backs off per key, exponentially with jitter, so one broken record
  retries slowly while others flow; `forget` resets it after a success.
- After `shutdown`, `get` raises ShutDown (waking idle workers) and adds are dropped; keys a
  worker already holds are still finished by that worker.

The queue belongs to one event loop: `add_after` and `add_rate_limited` need it running.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import random
from collections import deque
from dataclasses import dataclass

from controller.runtime import clock as clocks


class ShutDown(Exception):
    """`get` on a queue that is shutting down: the worker should return."""


@dataclass(frozen=True, slots=True)
class Backoff:
    """Per-key retry delays: base * 2**failures, capped, each shortened by up to `jitter`.

    Jitter only shortens, so the cap is a true upper bound, and spreads keys that failed
    together (a store outage) so their retries do not arrive together.
    """

    base: float = 0.005
    cap: float = 60.0
    jitter: float = 0.2

    def __post_init__(self) -> None:
        if not self.base > 0:
            raise ValueError(f"Backoff.base={self.base!r}: must be > 0 seconds")
        if not self.cap >= self.base:
            raise ValueError(f"Backoff.cap={self.cap!r}: must be >= base ({self.base!r})")
        if not 0 <= self.jitter < 1:
            raise ValueError(f"Backoff.jitter={self.jitter!r}: must be in [0, 1)")

    def delay(self, failures: int, rng: random.Random) -> float:
        """The delay before retry number `failures + 1`."""
        # 2.0 ** 1024 overflows; any exponent past the cap's is the cap anyway.
        ceiling = min(self.cap, self.base * 2.0 ** min(failures, 1000))
        return ceiling * (1.0 - self.jitter * rng.random())


DEFAULT_BACKOFF = Backoff()


class WorkQueue:
    def __init__(
        self,
        clock: clocks.Clock,
        *,
        rng: random.Random,
        backoff: Backoff = DEFAULT_BACKOFF,
    ) -> None:
        self._clock = clock
        self._rng = rng
        self._backoff = backoff
        self._queue: deque[str] = deque()
        # Keys that need a reconcile: queued, or being processed and added again.
        self._dirty: set[str] = set()
        self._processing: set[str] = set()
        self._getters: deque[asyncio.Future[None]] = deque()
        self._shutting_down = False
        self._failures: dict[str, int] = {}
        # Delayed keys: key -> (deadline, seq); heap entries whose seq no longer matches
        # were superseded by an earlier deadline or already fired, and are skipped.
        self._waiting: dict[str, tuple[float, int]] = {}
        self._heap: list[tuple[float, int, str]] = []
        self._seq = itertools.count()
        self._timer: asyncio.Task[None] | None = None
        self._timer_deadline = 0.0

    def __len__(self) -> int:
        """Keys ready for a worker (the queue depth metric); delayed keys are not counted."""
        return len(self._queue)

    @property
    def delayed(self) -> int:
        return len(self._waiting)

    @property
    def processing(self) -> int:
        return len(self._processing)

    @property
    def shutting_down(self) -> bool:
        return self._shutting_down

    def add(self, key: str) -> None:
        if self._shutting_down or key in self._dirty:
            return
        self._dirty.add(key)
        if key in self._processing:
            return
        self._queue.append(key)
        self._wake_one_getter()

    async def get(self) -> str:
        """The next key; the caller must call `done(key)` when finished with it."""
        while not self._queue or self._shutting_down:
            if self._shutting_down:
                raise ShutDown
            waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._getters.append(waiter)
            try:
                await waiter
            except asyncio.CancelledError:
                # A wake-up meant for us must not be lost with us.
                if waiter.done() and not waiter.cancelled() and self._queue:
                    self._wake_one_getter()
                raise
        key = self._queue.popleft()
        self._dirty.discard(key)
        self._processing.add(key)
        return key

    def done(self, key: str) -> None:
        self._processing.discard(key)
        if key in self._dirty and not self._shutting_down:
            self._queue.append(key)
            self._wake_one_getter()

    def add_after(self, key: str, delay: float) -> None:
        if self._shutting_down:
            return
        if not delay > 0:
            self.add(key)
            return
        deadline = self._clock.monotonic() + delay
        current = self._waiting.get(key)
        if current is not None and current[0] <= deadline:
            return
        seq = next(self._seq)
        self._waiting[key] = (deadline, seq)
        heapq.heappush(self._heap, (deadline, seq, key))
        self._arm_timer()

    def add_rate_limited(self, key: str) -> None:
        failures = self._failures.get(key, 0)
        self._failures[key] = failures + 1
        self.add_after(key, self._backoff.delay(failures, self._rng))

    def forget(self, key: str) -> None:
        self._failures.pop(key, None)

    def num_requeues(self, key: str) -> int:
        """Rate-limited adds since the key was last forgotten."""
        return self._failures.get(key, 0)

    def shutdown(self) -> None:
        self._shutting_down = True
        while self._getters:
            getter = self._getters.popleft()
            if not getter.done():
                getter.set_result(None)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._waiting.clear()
        self._heap.clear()

    def _wake_one_getter(self) -> None:
        while self._getters:
            getter = self._getters.popleft()
            if not getter.done():
                getter.set_result(None)
                return

    def _earliest_deadline(self) -> float | None:
        while self._heap:
            deadline, seq, key = self._heap[0]
            if self._waiting.get(key, (0.0, -1))[1] == seq:
                return deadline
            heapq.heappop(self._heap)
        return None

    def _arm_timer(self) -> None:
        """Make the one timer task sleep until the earliest deadline, replacing a later one."""
        earliest = self._earliest_deadline()
        running = self._timer is not None and not self._timer.done()
        if running and earliest is not None and self._timer_deadline <= earliest:
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if earliest is None:
            return
        self._timer_deadline = earliest
        self._timer = asyncio.get_running_loop().create_task(
            self._fire_at(earliest), name="workqueue-timer"
        )

    async def _fire_at(self, deadline: float) -> None:
        await self._clock.sleep(deadline - self._clock.monotonic())
        self._timer = None
        # Everything up to the deadline slept for is due, even if the clock reads a hair
        # earlier (float rounding, a loop that wakes timers early): otherwise the timer
        # would re-arm for a zero delay forever.
        due_by = max(deadline, self._clock.monotonic())
        while self._heap and self._heap[0][0] <= due_by:
            _, seq, key = heapq.heappop(self._heap)
            if self._waiting.get(key, (0.0, -1))[1] == seq:
                del self._waiting[key]
                self.add(key)
        self._arm_timer()
