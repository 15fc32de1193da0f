"""The event recorder: what happened, for people, written off the hot path and never in the way.

Any room calls `record` (or `normal`/`warning`) where something worth telling happens: a
placement, a fence, a strike, a rollback. The call is synchronous and does no I/O: it folds
the occurrence into an in-memory buffer and returns, so a heartbeat or a reconcile never
waits on an event write, and a store that is down never fails the operation that happened.

Aggregation, as Kubernetes' event correlator: occurrences of one (object, reason, message)
are one record (`api.resources.event.name_for`), whose `count` and `last_timestamp` move.
In the buffer they merge before any write; in the store a flush re-reads the record and
bumps it (or creates it, once it expired), with a conditional write retried on Conflict.

Bounded: at most `capacity` distinct events wait in the buffer; a new one beyond that is
dropped and counted (`dropped`), while repeats of a waiting one still merge. A write that
fails after its retries is dropped and logged: events are a debugging aid, losing one costs
a line in `describe`, and keeping failed writes would make the buffer unbounded when the
store is down for long.

A flush runs every `flush_every` seconds on the injected clock (tests drive it with
FakeClock) and at `stop`. Each record expires `ttl` seconds after its last occurrence.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import re
from collections.abc import Callable
from datetime import datetime, timedelta

import pydantic

from api import messages
from api.resources import event as event_model
from api.resources import meta
from controller.runtime import background, signal
from controller.runtime import clock as clock_mod
from store import base, errors, retry

log = logging.getLogger("dcnr.events")

Event = event_model.Event
#: (type, reason) of every occurrence recorded: the server feeds `dcnr_events_total`.
Sink = Callable[[str, str], None]

_REASON = re.compile(r"^[A-Z][A-Za-z0-9]{0,127}\Z")
DEFAULT_TTL = 3600.0
DEFAULT_CAPACITY = 1024
DEFAULT_FLUSH_EVERY = 1.0


@dataclasses.dataclass(slots=True)
class _Waiting:
    """Occurrences of one event not yet written."""

    involved: event_model.ObjectReference
    type: event_model.EventType
    reason: str
    message: str
    count: int
    first: datetime
    last: datetime


class Recorder:
    def __init__(
        self,
        *,
        store: base.Store,
        clock: clock_mod.Clock,
        replica: str,
        ttl: float = DEFAULT_TTL,
        capacity: int = DEFAULT_CAPACITY,
        flush_every: float = DEFAULT_FLUSH_EVERY,
        on_recorded: Sink | None = None,
    ) -> None:
        if not ttl > 0:
            raise ValueError(f"event ttl {ttl!r}: must be > 0 seconds")
        if capacity < 1:
            raise ValueError(f"event buffer capacity {capacity!r}: must be >= 1")
        self._store = store
        self._clock = clock
        self._replica = replica
        self.ttl = ttl
        self._capacity = capacity
        self._flush_every = flush_every
        self._on_recorded = on_recorded
        self._waiting: dict[str, _Waiting] = {}
        self._background = background.Background("events")
        #: Distinct events dropped because the buffer was full, and writes that failed.
        self.dropped = 0
        self.failed = 0
        #: Bumped after every flush: what a caller waits on to know the writes are done.
        self.flushed = signal.Signal(clock)

    # -- recording: synchronous, no I/O ------------------------------------------------------

    def normal(self, kind: str, name: str, reason: str, message: str) -> None:
        self.record(kind, name, type="Normal", reason=reason, message=message)

    def warning(self, kind: str, name: str, reason: str, message: str) -> None:
        self.record(kind, name, type="Warning", reason=reason, message=message)

    def record(self, kind: str, name: str, *, type: str, reason: str, message: str) -> None:
        """Note one occurrence; returns at once and never raises (a malformed event is
        logged and dropped: recording must not fail what it records). `type` is "Normal"
        or "Warning"; anything else is taken as Normal."""
        kind_of: event_model.EventType = "Warning" if type == "Warning" else "Normal"
        text = messages.clip(message, event_model.MAX_MESSAGE_CHARS)
        try:
            if not _REASON.match(reason):
                raise ValueError(f"event reason {reason!r}: must be CamelCase, e.g. Placed")
            involved = event_model.ObjectReference(kind=kind, name=name)
            key = event_model.name_for(involved, reason, text)
            meta.check_dns1123_subdomain(key)
        except (pydantic.ValidationError, ValueError) as exc:
            log.warning("event dropped: %s", messages.clip(str(exc)))
            return
        if self._on_recorded is not None:
            self._on_recorded(kind_of, reason)
        now = self._clock.now()
        waiting = self._waiting.get(key)
        if waiting is not None:
            waiting.count += 1
            waiting.last = now
            return
        if len(self._waiting) >= self._capacity:
            self.dropped += 1
            return
        self._waiting[key] = _Waiting(involved, kind_of, reason, text, 1, now, now)

    def waiting(self) -> int:
        """Distinct events not yet written."""
        return len(self._waiting)

    # -- writing: a background task --------------------------------------------------------

    def start(self) -> None:
        self._background.start(self._run)

    async def stop(self) -> None:
        await self._background.stop()
        await self.flush()

    async def _run(self) -> None:
        while True:
            await self._clock.sleep(self._flush_every)
            await self.flush()

    async def flush(self) -> None:
        """Write every waiting event; each failure is dropped and logged, never raised."""
        waiting, self._waiting = self._waiting, {}
        for name, item in waiting.items():
            try:
                await self._write(name, item)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # best effort: see the module docstring
                self.failed += 1
                log.warning(
                    "event not written",
                    extra={"fields": {"event": name, "error": messages.clip(str(exc))}},
                )
        self.flushed.bump()

    async def _write(self, name: str, item: _Waiting) -> None:
        async def attempt() -> None:
            try:
                current = await self._store.get(Event, name)
            except errors.NotFound:
                await self._store.create(self._fresh(name, item))
                return
            bumped = current.model_copy(deep=True)
            bumped.count += item.count
            bumped.last_timestamp = max(current.last_timestamp, item.last)
            bumped.expire_time = bumped.last_timestamp + timedelta(seconds=self.ttl)
            bumped.reporting_replica = self._replica
            await self._store.update(bumped)

        # AlreadyExists: another replica created it between our get and create.
        await retry.retry_on_conflict(
            attempt, what=f"record event {name!r}", also=(errors.AlreadyExists,)
        )

    def _fresh(self, name: str, item: _Waiting) -> Event:
        return Event(
            metadata=meta.ObjectMeta(name=name),
            involved_object=item.involved,
            type=item.type,
            reason=item.reason,
            message=item.message,
            count=item.count,
            first_timestamp=item.first,
            last_timestamp=item.last,
            reporting_replica=self._replica,
            expire_time=item.last + timedelta(seconds=self.ttl),
        )
