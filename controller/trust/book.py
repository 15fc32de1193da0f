"""PNode trust: consecutive valid results and strikes in a sliding window, and Bugged.

Two halves. `apply` is pure: (Trust, outcomes, policy, now) → new Trust and what changed.
`TrustBook` is the I/O: it gathers outcomes in memory and writes each PNode's record at
most once per `flush_every` (strikes sooner, `strike_flush` — a strike may make a PNode
Bugged, and Bugged must take effect quickly), with conditional writes re-read on
Conflict (`store.retry`). So a PNode computing a thousand results a second costs one store write a
second, not a thousand. Outcomes not yet written are lost if the orchestrator dies:
acceptable, because trust is a scheduling optimization and never a correctness
requirement (a lost strike is re-earned by the next lie; a lost valid result only delays
trust).

Bugged: `strike_limit` strikes within the last `window` results. A Bugged PNode gets no
new work (scheduler filter) and its allocations migrate (network plan rule). It stays
Bugged until Uncordon clears it (bugged=False, strikes=0; `apply` then forgets the window's
strikes) or, when `probation_after` > 0, until that long has passed: it is then cleared
on probation, with `strike_limit - 1` strikes kept in its window, so its next lie
within the window makes it Bugged again.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta

from api.resources import pnode
from controller.runtime import background, recorder
from controller.runtime import clock as clock_mod
from store import base, errors, retry

log = logging.getLogger("dcnr.trust")

VALID, STRIKE = "V", "S"
#: Validation events kept on a PNode (oldest dropped).
MAX_EVENTS = 20


@dataclasses.dataclass(frozen=True, slots=True)
class TrustPolicy:
    window: int = 50
    strike_limit: int = 3
    #: Seconds after which a Bugged PNode is cleared on probation; 0: only Uncordon clears.
    probation_after: float = 0.0
    flush_every: float = 1.0
    strike_flush: float = 0.05

    def __post_init__(self) -> None:
        if not 1 <= self.strike_limit <= self.window <= 1000:
            raise ValueError(
                f"trust policy: need 1 <= strike_limit ({self.strike_limit}) <= window "
                f"({self.window}) <= 1000"
            )


@dataclasses.dataclass(frozen=True, slots=True)
class Outcome:
    valid: bool
    job: str = ""
    vnode: str = ""
    check: str = ""
    message: str = ""


@dataclasses.dataclass(frozen=True, slots=True)
class Applied:
    trust: pnode.Trust
    events: tuple[pnode.ValidationEvent, ...]
    became_bugged: bool
    cleared: bool


def apply(
    trust: pnode.Trust, outcomes: Sequence[Outcome], policy: TrustPolicy, now: datetime
) -> Applied:
    """Fold `outcomes` (oldest first) into `trust`."""
    t = trust.model_copy(deep=True)
    t.window = _window(t)
    events: list[pnode.ValidationEvent] = []
    cleared = False
    if (
        t.bugged
        and policy.probation_after > 0
        and t.bugged_since is not None
        and now - t.bugged_since >= timedelta(seconds=policy.probation_after)
    ):
        t.bugged, cleared = False, True
        t.window = (STRIKE * (policy.strike_limit - 1))[-policy.window :]
        events.append(
            pnode.ValidationEvent(
                time=now,
                verdict="probation-cleared",
                message=f"Bugged for {policy.probation_after:g} s: on probation",
            )
        )
    was_bugged = t.bugged
    for o in outcomes:
        t.window = (t.window + (VALID if o.valid else STRIKE))[-policy.window :]
        if o.valid:
            t.consecutive_valid += 1
            t.valid_total += 1
            continue
        t.consecutive_valid = 0
        t.strikes_total += 1
        events.append(
            pnode.ValidationEvent(
                time=now,
                job=o.job,
                vnode=o.vnode,
                check=o.check,
                verdict="rejected",
                message=o.message[:512],
            )
        )
    t.strikes = t.window.count(STRIKE)
    became = not t.bugged and t.strikes >= policy.strike_limit
    if became:
        t.bugged, t.bugged_since = True, now
        events.append(
            pnode.ValidationEvent(
                time=now,
                verdict="bugged",
                message=f"{t.strikes} strikes in the last {len(t.window)} results "
                f"(limit {policy.strike_limit})",
            )
        )
    return Applied(t, tuple(events), became and not was_bugged, cleared)


def _window(trust: pnode.Trust) -> str:
    """The trust's window, less its strikes if Uncordon reset them (strikes set to 0 with
    the window left as it was): forget them."""
    if trust.strikes < trust.window.count(STRIKE):
        return trust.window.replace(STRIKE, "")
    return trust.window


def with_events(
    old: list[pnode.ValidationEvent], new: Sequence[pnode.ValidationEvent]
) -> list[pnode.ValidationEvent]:
    return [*old, *new][-MAX_EVENTS:]


class TrustBook:
    """Outcomes per PNode, written coalesced (see the module docstring)."""

    def __init__(
        self,
        *,
        store: base.Store,
        clock: clock_mod.Clock,
        policy: TrustPolicy | None = None,
        on_written: Callable[[Sequence[pnode.PNode]], None] | None = None,
        on_bugged: Callable[[str], None] | None = None,
        events: recorder.Recorder | None = None,
    ) -> None:
        """`events` hears of strikes, Bugged and probation, for people (the PNode's own
        `validation_events` keep the last few with their detail)."""
        self._events = events
        self._store = store
        self._clock = clock
        self.policy = policy or TrustPolicy()
        self._on_written = on_written
        self._on_bugged = on_bugged
        self._pending: dict[str, list[Outcome]] = {}
        #: Outcomes being written right now (taken out of `_pending` by a flush).
        self._inflight: dict[str, list[Outcome]] = {}
        self._wake = asyncio.Event()
        self._urgent = False
        self._background = background.Background("trust-book")

    def record(self, pnode_name: str, outcome: Outcome) -> None:
        self._pending.setdefault(pnode_name, []).append(outcome)
        if not outcome.valid:
            self._urgent = True
            self._wake.set()

    def pending(self) -> int:
        return sum(len(v) for v in self._pending.values())

    def strikes(self, pnode_name: str, written: pnode.Trust) -> int:
        """Strikes in the PNode's window counting what this replica holds unwritten
        (`written`: its trust as last read)."""
        unwritten = [*self._inflight.get(pnode_name, ()), *self._pending.get(pnode_name, ())]
        window = (_window(written) + "".join(VALID if o.valid else STRIKE for o in unwritten))[
            -self.policy.window :
        ]
        return window.count(STRIKE)

    def suspect(self, pnode_name: str, written: pnode.Trust) -> bool:
        """Whether the PNode is Bugged, or will be once what this replica holds unwritten is
        written. The driver stops using a suspect PNode at once, instead of feeding it work
        until the write lands and the view shows it — a PNode that lies on every result
        would otherwise pile up strikes meanwhile."""
        if written.bugged:
            return True
        return self.strikes(pnode_name, written) >= self.policy.strike_limit

    def start(self) -> None:
        self._background.start(self._run)

    async def stop(self) -> None:
        await self._background.stop()
        await self.flush()

    async def _run(self) -> None:
        while True:
            self._wake.clear()
            if not self._urgent:
                waiter = asyncio.ensure_future(self._wake.wait())
                sleeper = asyncio.ensure_future(self._clock.sleep(self.policy.flush_every))
                await asyncio.wait([waiter, sleeper], return_when=asyncio.FIRST_COMPLETED)
                waiter.cancel()
                sleeper.cancel()
                await asyncio.gather(waiter, sleeper, return_exceptions=True)
                if self._urgent:  # gather a few more strikes of the same burst
                    await self._clock.sleep(self.policy.strike_flush)
            self._urgent = False
            try:
                await self.flush()
            except Exception:  # the store may be down for a moment: keep, retry later
                log.exception("writing trust failed")
                await self._clock.sleep(self.policy.flush_every)

    async def flush(self) -> None:
        pending, self._pending = self._pending, {}
        self._inflight = pending
        try:
            for name, outcomes in sorted(pending.items()):
                try:
                    await self._write(name, outcomes)
                except errors.NotFound:
                    continue  # the PNode was deleted: nothing to hold trust on
                except Exception:
                    merged = self._pending.setdefault(name, [])
                    merged[:0] = outcomes
                    raise
                finally:
                    self._inflight.pop(name, None)
        finally:
            self._inflight = {}

    async def _write(self, name: str, outcomes: list[Outcome]) -> None:
        async def attempt() -> None:
            node = await self._store.get(pnode.PNode, name)
            result = apply(node.status.trust, outcomes, self.policy, self._clock.now())
            updated = node.model_copy(deep=True)
            updated.status.trust = result.trust
            updated.status.validation_events = with_events(
                node.status.validation_events, result.events
            )
            written = await self._store.update(updated)
            if self._on_written is not None:
                self._on_written([written])
            if self._events is not None:
                for found in result.events:
                    self._tell(name, found)
            if result.became_bugged:
                log.warning(
                    "pnode bugged",
                    extra={"fields": {"pnode": name, "strikes": result.trust.strikes}},
                )
                if self._on_bugged is not None:
                    self._on_bugged(name)

        await retry.retry_on_conflict(attempt, what=f"record the trust of pnode {name!r}")

    def _tell(self, name: str, found: pnode.ValidationEvent) -> None:
        assert self._events is not None
        if found.verdict == "rejected" and found.check == "false-accusation":
            self._events.warning(
                "PNode", name, "Strike", f"accusation against {found.vnode} refused: no proof"
            )
        elif found.verdict == "rejected":
            where = " ".join(
                f"{k} {v}" for k, v in (("job", found.job), ("vnode", found.vnode)) if v
            )
            self._events.warning(
                "PNode", name, "Strike",
                f"result rejected{' (' + where + ')' if where else ''}:"
                f" {found.check or 'check'} failed",
            )  # fmt: skip
        elif found.verdict == "bugged":
            self._events.warning("PNode", name, "Bugged", f"{found.message}; gets no new work")
        elif found.verdict == "probation-cleared":
            self._events.normal("PNode", name, "ProbationCleared", found.message)
