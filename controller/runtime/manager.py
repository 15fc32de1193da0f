"""Runs reconcile loops: workers, queues, resyncs, and all of the retry policy.

Each registered loop gets its own `WorkQueue` and a few workers. A worker takes a key,
calls `reconcile(key)`, and turns the answer into queue calls — the only place in the
system that decides when a key is looked at again:

    Result(requeue_after=s)      forget the backoff, add_after(key, s)
    Result(requeue=True)         add_rate_limited(key)  (backoff, not counted as an error)
    Result()                     forget the backoff
    TerminalError                log, count, forget; no retry
    any other Exception          log with traceback, count, add_rate_limited(key)

and always `done(key)`. An exception never kills a worker.

Events only produce keys (`enqueue`). A periodic resync lists every key of a loop and
enqueues it, so a lost event, a crashed replica or a bug in an event source is repaired on
the next resync: the loops are level-triggered and the events are only a latency shortcut.
`owns(key)` decides which keys this replica takes (rendezvous sharding later); it is checked
on enqueue, on resync, and again just before a reconcile, so keys that moved to another
replica while queued are dropped. Owning too much is harmless (writes are conditional);
sharding only saves work.

Metrics: `observe(callback)` receives one `Reconciled` per reconcile; `stats(loop)` gives
counters and queue depths. The metrics module adapts these to Prometheus; this module
imports no metrics library.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import random
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field

from controller.runtime import clock as clocks
from controller.runtime import workqueue
from reconcilers import base

log = logging.getLogger(__name__)

#: Keys a resync enqueues between two yields to the event loop.
RESYNC_CHUNK = 512

ListKeys = Callable[[], Awaitable[Iterable[str]]]
Owns = Callable[[str], bool]


class Outcome(enum.Enum):
    SUCCESS = "success"
    REQUEUE_AFTER = "requeue_after"
    REQUEUE = "requeue"
    ERROR = "error"
    TERMINAL_ERROR = "terminal_error"
    #: Cut short by `stop` after its grace period.
    CANCELLED = "cancelled"


@dataclass(frozen=True, slots=True)
class Reconciled:
    loop: str
    key: str
    outcome: Outcome
    seconds: float


@dataclass(frozen=True, slots=True)
class LoopStats:
    loop: str
    outcomes: dict[Outcome, int]
    #: Keys skipped because this replica no longer owns them.
    disowned: int
    resync_errors: int
    depth: int
    delayed: int
    in_flight: int


def _owns_all(key: str) -> bool:
    return True


@dataclass
class _Loop:
    reconciler: base.Reconciler
    queue: workqueue.WorkQueue
    workers: int
    resync_every: float | None
    list_keys: ListKeys | None
    owns: Owns
    outcomes: dict[Outcome, int] = field(default_factory=lambda: dict.fromkeys(Outcome, 0))
    disowned: int = 0
    resync_errors: int = 0


class Manager:
    def __init__(
        self,
        clock: clocks.Clock,
        *,
        rng: random.Random,
        backoff: workqueue.Backoff = workqueue.DEFAULT_BACKOFF,
    ) -> None:
        self._clock = clock
        self._rng = rng
        self._backoff = backoff
        self._loops: dict[str, _Loop] = {}
        self._observers: list[Callable[[Reconciled], None]] = []
        self._workers: list[asyncio.Task[None]] = []
        self._resyncs: list[asyncio.Task[None]] = []
        #: Resyncs started because replica membership changed (see `membership_changed`).
        self._moves: set[asyncio.Task[None]] = set()
        self._state = "new"

    def register(
        self,
        reconciler: base.Reconciler,
        *,
        workers: int = 2,
        resync_every: float | None = None,
        list_keys: ListKeys | None = None,
        owns: Owns | None = None,
    ) -> None:
        """Add a loop. `list_keys` is listed once at start, then every `resync_every` s."""
        name = reconciler.name
        if self._state != "new":
            raise RuntimeError(f"Manager.register({name!r}): register loops before start()")
        if name in self._loops:
            raise ValueError(f"Manager.register: loop name {name!r} is already registered")
        if workers < 1:
            raise ValueError(f"Manager.register({name!r}): workers={workers!r}, must be >= 1")
        if resync_every is not None:
            if not resync_every > 0:
                raise ValueError(
                    f"Manager.register({name!r}): resync_every={resync_every!r}, "
                    "must be > 0 seconds or None"
                )
            if list_keys is None:
                raise ValueError(
                    f"Manager.register({name!r}): resync_every={resync_every!r} needs "
                    "list_keys to know what to resync"
                )
        self._loops[name] = _Loop(
            reconciler=reconciler,
            queue=workqueue.WorkQueue(self._clock, rng=self._rng, backoff=self._backoff),
            workers=workers,
            resync_every=resync_every,
            list_keys=list_keys,
            owns=owns or _owns_all,
        )

    def observe(self, callback: Callable[[Reconciled], None]) -> None:
        self._observers.append(callback)

    def enqueue(self, loop_name: str, key: str) -> None:
        loop = self._loop(loop_name)
        if self._owned(loop_name, loop, key):
            loop.queue.add(key)

    def stats(self, loop_name: str) -> LoopStats:
        loop = self._loop(loop_name)
        return LoopStats(
            loop=loop_name,
            outcomes=dict(loop.outcomes),
            disowned=loop.disowned,
            resync_errors=loop.resync_errors,
            depth=len(loop.queue),
            delayed=loop.queue.delayed,
            in_flight=loop.queue.processing,
        )

    @property
    def loop_names(self) -> list[str]:
        return list(self._loops)

    async def start(self) -> None:
        if self._state != "new":
            raise RuntimeError(f"Manager.start: already {self._state}; a manager starts once")
        self._state = "running"
        for name, loop in self._loops.items():
            for i in range(loop.workers):
                self._workers.append(
                    asyncio.create_task(self._work(name, loop), name=f"reconcile-{name}-{i}")
                )
            if loop.list_keys is not None:
                self._resyncs.append(
                    asyncio.create_task(self._resync(name, loop), name=f"resync-{name}")
                )

    async def stop(self, grace: float) -> None:
        """Take no new keys; give reconciles in flight `grace` seconds (on the clock) to
        finish, then cancel them. A cancelled key is not lost: the next start resyncs it."""
        if self._state != "running":
            self._state = "stopped"
            return
        self._state = "stopping"
        for task in [*self._resyncs, *self._moves]:
            task.cancel()
        for loop in self._loops.values():
            loop.queue.shutdown()
        await asyncio.gather(*self._resyncs, *self._moves, return_exceptions=True)
        if self._workers:
            finished = asyncio.ensure_future(asyncio.wait(self._workers))
            grace_over = asyncio.ensure_future(self._clock.sleep(grace))
            await asyncio.wait({finished, grace_over}, return_when=asyncio.FIRST_COMPLETED)
            for waiter in (finished, grace_over):
                waiter.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await waiter
        stragglers = [task for task in self._workers if not task.done()]
        if stragglers:
            log.warning(
                "cancelling reconciles still running after the stop grace period",
                extra={"fields": {"grace_s": grace, "count": len(stragglers)}},
            )
            for task in stragglers:
                task.cancel()
            await asyncio.gather(*stragglers, return_exceptions=True)
        self._state = "stopped"

    def _loop(self, loop_name: str) -> _Loop:
        try:
            return self._loops[loop_name]
        except KeyError:
            raise KeyError(
                f"loop {loop_name!r} is not registered; registered: {sorted(self._loops)}"
            ) from None

    async def _work(self, name: str, loop: _Loop) -> None:
        while True:
            try:
                key = await loop.queue.get()
            except workqueue.ShutDown:
                return
            try:
                await self._reconcile(name, loop, key)
            finally:
                loop.queue.done(key)
            # A reconcile answered from the view awaits nothing that suspends, and a resync
            # queues every key: without this a worker ran thousands of them (5,000 PNodes,
            # ~0.1 s) in one piece, and every Heartbeat and Resolve waited (issue 13).
            await asyncio.sleep(0)

    async def _reconcile(self, name: str, loop: _Loop, key: str) -> None:
        queue = loop.queue
        if not self._owned(name, loop, key):
            queue.forget(key)
            loop.disowned += 1
            return
        fields = {"loop": name, "key": key}
        started = self._clock.monotonic()
        outcome = Outcome.CANCELLED
        try:
            result = await loop.reconciler.reconcile(key)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is None or task.cancelling():
                raise  # stop() is cancelling this worker
            # A CancelledError leaked out of the reconciler (it awaited something that was
            # cancelled): a bug in the loop, not a request to stop this worker.
            outcome = Outcome.ERROR
            queue.add_rate_limited(key)
            log.exception(
                "reconcile raised CancelledError; retrying with backoff", extra={"fields": fields}
            )
        except base.TerminalError as error:
            outcome = Outcome.TERMINAL_ERROR
            queue.forget(key)
            log.error(
                "reconcile failed terminally; not retrying: %s",
                error,
                extra={"fields": fields},
            )
        except Exception:
            outcome = Outcome.ERROR
            queue.add_rate_limited(key)
            log.exception(
                "reconcile failed; retrying with backoff",
                extra={"fields": {**fields, "attempt": queue.num_requeues(key)}},
            )
        else:
            if result.requeue_after is not None:
                outcome = Outcome.REQUEUE_AFTER
                queue.forget(key)
                queue.add_after(key, result.requeue_after)
            elif result.requeue:
                outcome = Outcome.REQUEUE
                queue.add_rate_limited(key)
            else:
                outcome = Outcome.SUCCESS
                queue.forget(key)
        finally:
            self._record(loop, Reconciled(name, key, outcome, self._clock.monotonic() - started))

    async def _resync(self, name: str, loop: _Loop) -> None:
        while True:
            await self._resync_once(name, loop)
            if loop.resync_every is None:
                return
            await self._clock.sleep(loop.resync_every)

    async def _resync_once(self, name: str, loop: _Loop) -> None:
        assert loop.list_keys is not None
        try:
            keys = await loop.list_keys()
            for count, key in enumerate(keys, start=1):
                if self._owned(name, loop, key):
                    loop.queue.add(key)
                if count % RESYNC_CHUNK == 0:
                    await asyncio.sleep(0)  # 10,000 ownership hashes: let the hot paths in
        except Exception:
            loop.resync_errors += 1
            log.exception("resync could not list keys", extra={"fields": {"loop": name}})

    def membership_changed(self, members: list[str]) -> None:
        """Replica membership moved (a replica joined or died): keys may have changed owner,
        so every loop resyncs now rather than at its next periodic resync. Before `start`
        and after `stop` there is nothing to do: `start` resyncs anyway."""
        if self._state != "running":
            return
        task = asyncio.get_running_loop().create_task(self.resync_all(), name="resync-moved")
        self._moves.add(task)
        task.add_done_callback(self._moves.discard)

    async def resync_all(self) -> None:
        """Enqueue every owned key of every loop now: ownership moved (a replica joined or
        died), so keys this replica did not own a moment ago may be its own now."""
        for name, loop in self._loops.items():
            if loop.list_keys is not None:
                await self._resync_once(name, loop)

    def _owned(self, name: str, loop: _Loop, key: str) -> bool:
        """`owns(key)`, treating a failing `owns` as yes: owning too much costs only work."""
        try:
            return loop.owns(key)
        except Exception:
            log.exception(
                "owns() failed; taking the key", extra={"fields": {"loop": name, "key": key}}
            )
            return True

    def _record(self, loop: _Loop, event: Reconciled) -> None:
        loop.outcomes[event.outcome] += 1
        for observer in self._observers:
            try:
                observer(event)
            except Exception:
                log.exception("reconcile observer failed", extra={"fields": {"loop": event.loop}})
