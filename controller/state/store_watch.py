"""What this replica saw of its store: the periods in which it could not complete a round trip.

A stalled or unreachable store is the orchestrator's problem, not the PNodes': while this
replica cannot read the store it cannot see renewals other replicas persisted, and while
the replica that takes a PNode's heartbeats cannot write, its renewals stay unpersisted. So
lease expiry is judged with the time this replica could not observe the store taken out
(`api.resources.lease.held_through`); this module supplies that time.

Every store call goes through `Observed`, which tells `StoreWatch` when it starts and how it
ends. The rule:

- a call that returns, or fails with an answer from the store (NotFound, AlreadyExists,
  Conflict, InvalidRequest, Gone), is a successful round trip;
- a call that fails otherwise (Unavailable after the backend's retries, a lost connection)
  marks the store *troubled* until the next successful round trip;
- an unobserved period runs from the last successful round trip to the next one, when in
  between a call failed or one took longer than `stall_after` seconds (it is recorded when
  it ends; `unobserved()` includes a period still going on: troubled, or a call in flight
  for longer than `stall_after`).

Measured from the last success, not from the first failure, because that is the last moment
this replica knows the store answered; the view reads the change feed (a round trip) every
`view_refresh` seconds, so an idle gap adds at most that much. The newest `KEEP` periods are
kept; `held_through` caps what they can add to a lease anyway.

Scrapes read `snapshot()` on the metrics thread while the event loop records; it copies the
in-flight table under a retry, as the other collectors do.
"""

from __future__ import annotations

import builtins
import dataclasses
import itertools
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

from api.resources import lease
from api.resources.meta import Resource
from controller.runtime import clock as clock_mod
from store import base, errors

R = TypeVar("R", bound=Resource)
T = TypeVar("T")

#: Unobserved periods remembered; older ones end long before any lease they could extend.
KEEP = 256

#: Failures that are the store's answer to the call, not a sign it cannot be reached.
ANSWERS: tuple[type[errors.StoreError], ...] = (
    errors.NotFound,
    errors.AlreadyExists,
    errors.Conflict,
    errors.InvalidRequest,
    errors.Gone,  # the change feed's answer that a cursor is too old
)


@dataclasses.dataclass(frozen=True, slots=True)
class Snapshot:
    """What /metrics shows: the current stall, time unobserved in all, failed calls."""

    stalled_seconds: float
    unobserved_seconds_total: float
    failed_calls_total: int


class StoreWatch:
    def __init__(self, clock: clock_mod.Clock, *, stall_after: float) -> None:
        self._clock = clock
        self._stall_after = stall_after
        #: Wall time of the newest successful round trip (start-up counts as one: the
        #: orchestrator's first refresh must succeed before it serves).
        self._last_ok = clock.now()
        self._troubled = False
        #: token → monotonic start of each call in flight.
        self._in_flight: dict[int, float] = {}
        self._tokens = itertools.count()
        self._periods: deque[lease.Unobserved] = deque(maxlen=KEEP)
        self._unobserved_total = 0.0
        self._failed = 0

    # -- recording (the event loop) ---------------------------------------------------------

    def started(self) -> int:
        token = next(self._tokens)
        self._in_flight[token] = self._clock.monotonic()
        return token

    def answered(self, token: int) -> None:
        """The call got the store's answer (a result, or an error the store decided)."""
        began = self._in_flight.pop(token, None)
        slow = began is not None and self._clock.monotonic() - began > self._stall_after
        now = self._clock.now()
        if (self._troubled or slow) and now > self._last_ok:
            period = lease.Unobserved(self._last_ok, now)
            self._periods.append(period)
            self._unobserved_total += (period.end - period.start).total_seconds()
        self._troubled = False
        self._last_ok = max(self._last_ok, now)

    def failed(self, token: int) -> None:
        """The call failed without an answer: the store is troubled until one succeeds."""
        self._in_flight.pop(token, None)
        self._troubled = True
        self._failed += 1

    def abandoned(self, token: int) -> None:
        """The caller gave up (cancelled): says nothing about the store."""
        self._in_flight.pop(token, None)

    # -- reading ----------------------------------------------------------------------------

    def _ongoing(self) -> lease.Unobserved | None:
        now = self._clock.now()
        oldest = min(_copied(lambda: list(self._in_flight.values())), default=None)
        stalled = oldest is not None and self._clock.monotonic() - oldest > self._stall_after
        if (self._troubled or stalled) and now > self._last_ok:
            return lease.Unobserved(self._last_ok, now)
        return None

    def unobserved(self) -> Sequence[lease.Unobserved]:
        """Every remembered unobserved period, with the one going on now, if any."""
        periods = _copied(lambda: list(self._periods))
        ongoing = self._ongoing()
        return periods if ongoing is None else [*periods, ongoing]

    def snapshot(self) -> Snapshot:
        ongoing = self._ongoing()
        stalled = (ongoing.end - ongoing.start).total_seconds() if ongoing is not None else 0.0
        return Snapshot(
            stalled_seconds=stalled,
            unobserved_seconds_total=self._unobserved_total + stalled,
            failed_calls_total=self._failed,
        )


def _copied(read: Callable[[], T]) -> T:
    """`read()` retried if a container changed size under it (a scrape on another thread)."""
    for _ in range(9):
        try:
            return read()
        except RuntimeError:
            continue
    return read()


class Observed:
    """A Store that tells `watch` how each of its calls went; otherwise the store itself."""

    def __init__(self, store: base.Store, watch: StoreWatch) -> None:
        self._store = store
        self._watch = watch

    async def _call(self, call: Callable[[], Awaitable[T]]) -> T:
        token = self._watch.started()
        try:
            result = await call()
        except ANSWERS:
            self._watch.answered(token)
            raise
        except Exception:
            self._watch.failed(token)
            raise
        except BaseException:  # cancelled: the caller gave up
            self._watch.abandoned(token)
            raise
        self._watch.answered(token)
        return result

    async def get(self, kind: type[R], name: str) -> R:
        return await self._call(lambda: self._store.get(kind, name))

    async def list(
        self,
        kind: type[R],
        *,
        index: tuple[str, str] | None = None,
        limit: int = base.DEFAULT_PAGE_SIZE,
        continue_token: str | None = None,
    ) -> base.Page[R]:
        return await self._call(
            lambda: self._store.list(kind, index=index, limit=limit, continue_token=continue_token)
        )

    async def versions(
        self,
        kind: type[Resource],
        *,
        limit: int = base.DEFAULT_VERSIONS_PAGE_SIZE,
        continue_token: str | None = None,
    ) -> base.Page[base.Version]:
        return await self._call(
            lambda: self._store.versions(kind, limit=limit, continue_token=continue_token)
        )

    async def create(self, obj: R) -> R:
        return await self._call(lambda: self._store.create(obj))

    async def update(self, obj: R) -> R:
        return await self._call(lambda: self._store.update(obj))

    async def delete(
        self,
        kind: type[R],
        name: str,
        *,
        resource_version: int | None = None,
        uid: str | None = None,
    ) -> None:
        await self._call(
            lambda: self._store.delete(kind, name, resource_version=resource_version, uid=uid)
        )

    async def transact(self, ops: Sequence[base.Op]) -> builtins.list[Resource | None]:
        return await self._call(lambda: self._store.transact(ops))

    async def feed_head(self, kinds: Sequence[type[Resource]]) -> str:
        return await self._call(lambda: self._store.feed_head(kinds))

    async def changes(
        self, cursor: str, *, limit: int = base.DEFAULT_PAGE_SIZE, held: base.Held | None = None
    ) -> base.ChangePage:
        return await self._call(lambda: self._store.changes(cursor, limit=limit, held=held))

    async def close(self) -> None:
        await self._store.close()
