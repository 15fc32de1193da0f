"""The level-triggered repair of stranded allocations: re-publish a PNode's assignment set.

Every `period` seconds the pass looks at this replica's view, keeps when each allocation
became stranded (Pending on a Ready, live PNode: `controller.state.stranded`, which also
decides), and for each PNode `decide` names, writes the PNode again:

    Update(pnode: assignments_version + 1, assignments_digest recomputed from the
           allocations the store lists on it) + Check(each listed allocation)

conditioned on the PNode's resource_version and on every listed allocation's, so the
digest written is that of the set as it stands when the write lands. The bumped version
makes every replica send the whole set again (an agent takes any version newer than the
one it knows), and the records read are put in this replica's view at once. An
`AssignmentsRepublished` event on the PNode says which allocation waited and how long.
A Conflict means a writer got there first (which bumps the version anyway); the next pass
looks again. Records written before the digest existed get one here.

`oldest_pending()` is the age of the longest-stranded allocation, for the gauge
`dcnr_allocation_pending_oldest_seconds`.
"""

from __future__ import annotations

import asyncio
import logging

from api.resources import allocation, pnode
from controller.runtime import background, recorder
from controller.runtime import clock as clock_mod
from controller.state import stranded
from controller.state import view as view_mod
from store import base, errors

log = logging.getLogger("dcnr.assignment_repair")


class AssignmentRepair:
    def __init__(
        self,
        store: base.Store,
        view: view_mod.View,
        clock: clock_mod.Clock,
        *,
        bound: float,
        events: recorder.Recorder | None = None,
    ) -> None:
        """Repairs a PNode once one of its allocations has been stranded `bound` seconds;
        looks every `period` = min(1, bound / 4) seconds."""
        self._store = store
        self._view = view
        self._clock = clock
        self._bound = bound
        self.period = min(1.0, bound / 4)
        self._events = events
        #: Stranded allocation → monotonic time it was first seen stranded.
        self._since: dict[stranded.Stranded, float] = {}
        #: PNode → monotonic time of its last repair.
        self._repaired: dict[str, float] = {}
        self._background = background.Background("assignment-repair")

    def oldest_pending(self) -> float:
        """Seconds the longest-stranded allocation has waited, as of the last pass and now
        (safe to call from another thread: it copies the map first)."""
        for _ in range(9):
            try:
                since = dict(self._since)
                break
            except RuntimeError:  # changed size under us (a scrape thread)
                continue
        else:
            return 0.0
        return stranded.oldest(since, self._clock.monotonic())

    async def run_once(self) -> list[stranded.Repair]:
        """One pass: what is stranded now, and the repairs due, performed."""
        now, wall = self._clock.monotonic(), self._clock.now()
        pnodes = self._view.pnodes
        allocations = list(self._view.allocations.values())
        # Liveness only of PNodes holding a Pending allocation: judging all of them every
        # pass was most of an idle orchestrator's CPU at 10,000 PNodes (benchmarks, idle).
        hosts = {a.spec.pnode for a in allocations if a.status.phase == "Pending"}
        live = {name for name in hosts if name in pnodes and self._view.is_live(name, wall)}
        found = stranded.stranded(pnodes, allocations, live)
        self._since = stranded.observed(self._since, found, now)
        self._repaired = {p: at for p, at in self._repaired.items() if now - at < self._bound}
        repairs = stranded.decide(self._since, now, bound=self._bound, repaired=self._repaired)
        for repair in repairs:
            self._repaired[repair.pnode] = now
            try:
                await self._republish(repair)
            except (errors.Conflict, errors.NotFound) as exc:
                log.info("pnode %s: not republished (%s); next pass", repair.pnode, exc)
        return repairs

    async def _republish(self, repair: stranded.Repair) -> None:
        node = await self._store.get(pnode.PNode, repair.pnode)
        held = await base.list_all(self._store, allocation.Allocation, index=("pnode", node.name))
        record = node.model_copy(deep=True)
        record.status.assignments_version += 1
        record.status.assignments_digest = allocation.digest_of(held)
        ops: list[base.Op] = [base.Update(record)]
        if len(held) < base.MAX_TRANSACTION_OPS:
            ops += [
                base.Check(
                    allocation.Allocation, a.name, a.metadata.resource_version, a.metadata.uid
                )
                for a in held
            ]
        written = await self._store.transact(ops)
        self._view.apply_written([*held, *written])
        version = record.status.assignments_version
        log.warning(
            "pnode %s: allocation %s Pending %.1f s on a Ready PNode; assignment set"
            " republished as version %d",
            repair.pnode,
            repair.slot,
            repair.pending_for,
            version,
            extra={"fields": {"pnode": repair.pnode, "allocation": repair.slot}},
        )
        if self._events is not None:
            name = repair.pnode
            self._events.warning(
                "PNode",
                name,
                "AssignmentsRepublished",
                f"allocation {repair.slot} stayed Pending on this Ready PNode past the bound"
                f" of {self._bound:g} s; its assignment set was sent again",
            )

    async def run(self) -> None:
        """A pass every `period` seconds until cancelled; a failed pass is logged."""
        while True:
            try:
                await self.run_once()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("assignment repair pass failed")
            await self._clock.sleep(self.period)

    def start(self) -> None:
        self._background.start(self.run)

    async def stop(self) -> None:
        await self._background.stop()
