"""Persisting PNode lease renewals, coalesced: store writes do not grow with heartbeats.

Every accepted heartbeat is noted here, in the view's renewal store
(`controller.state.renewals`), which the view's liveness reads at once; this keeper removes
each renewal once a stored lease covers it.
Every `lease_duration / 6` the keeper writes, in transactions of at most
MAX_TRANSACTION_OPS Update ops, the PNodeLease of each PNode whose newest renewal is at
least `lease_duration / 3` newer than its persisted `renew_time`. So:

- a PNode costs at most one lease write per lease/3, however often it heartbeats;
- the persisted renewal lags the newest real one by less than lease/3 + lease/6 = lease/2,
  which is what other replicas (and the lifecycle loop) see: a PNode heartbeating well
  within its lease never looks expired to them.

A renewal that arrives when the stored lease is already half a lease old or more does not
wait for the round: it wakes the keeper at once. In steady state that never happens (the lag
stays under lease/2); it happens when a PNode's heartbeats move to this replica from one that
stopped answering before persisting them (a replica SIGSTOPped, starved or killed), when the
agent has already spent up to its heartbeat timeout noticing. Waiting another lease/6 then
could let the stored lease run out while the PNode is heartbeating: healthy PNodes went
NotReady for a second in the chaos soak (benchmarks/results/soak-seed1-15m.md).

Rules that keep this safe: a renewal is never written for an incarnation older than the
PNode's current one (the agent was fenced, and a re-registered PNode's lease is written by
Register itself); `renew_time` never moves backwards; a batch that hits a Conflict (another
replica wrote one of its leases) is retried one lease at a time after re-reading each, and
a lease that conflicts again waits for the next round.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime, timedelta

from api.resources import lease as lease_model
from controller import config as config_mod
from controller.runtime import background
from controller.runtime import clock as clock_mod
from controller.state import renewals as renewals_mod
from controller.state import view as view_mod
from store import base, errors

log = logging.getLogger("dcnr.leases")

#: Renewals looked at between two yields to the event loop in a flush.
DUE_CHUNK = 64


class LeaseKeeper:
    def __init__(
        self,
        store: base.Store,
        clock: clock_mod.Clock,
        *,
        view: view_mod.View,
        config: config_mod.ControlPlaneConfig,
    ) -> None:
        self._store = store
        self._view = view
        self._clock = clock
        self._config = config
        #: The one renewal store, shared with the view's liveness.
        self._renewals = view.renewals
        self._lock = asyncio.Lock()
        self._background = background.Background("lease-keeper")
        #: Set by a renewal whose stored lease is at least half a lease old: flush now.
        self._urgent = asyncio.Event()

    def note(self, pnode: str, incarnation: int, at: datetime) -> None:
        """A renewal the service accepted; the newest per PNode (and incarnation) is kept."""
        self._renewals.note(pnode, incarnation, at)
        stored = self._view.leases.get(pnode)
        if stored is not None and urgent(
            stored.spec.renew_time, at, lease_duration=self._config.lease_duration
        ):
            self._urgent.set()

    def renewed_at(self, pnode: str, incarnation: int) -> datetime | None:
        """The newest renewal of that incarnation not yet persisted, if any."""
        return self._renewals.at(pnode, incarnation)

    def pending(self) -> int:
        return len(self._renewals)

    # -- writing ----------------------------------------------------------------------------

    async def flush(self, *, force: bool = False) -> int:
        """Write every due renewal (with `force`, every unpersisted one: graceful shutdown
        and tests); returns how many leases were written."""
        async with self._lock:
            threshold = 0.0 if force else self._config.lease_persist_every
            due = await self._due(threshold)
            written = 0
            for start in range(0, len(due), base.MAX_TRANSACTION_OPS):
                batch = due[start : start + base.MAX_TRANSACTION_OPS]
                try:
                    records = await self._store.transact([base.Update(obj) for obj in batch])
                except errors.Conflict:
                    written += await self._one_by_one(batch, threshold)
                    continue
                self._persisted([r for r in records if isinstance(r, lease_model.PNodeLease)])
                written += len(batch)
            return written

    async def _due(self, threshold: float) -> list[lease_model.PNodeLease]:
        due = []
        for count, (name, renewal) in enumerate(self._renewals.items(), start=1):
            if count % DUE_CHUNK == 0:
                # Thousands of heartbeating PNodes, a deep copy for each due: in one piece
                # this held the event loop for tens of ms every lease/6 (issue 13). A lease
                # that moves meanwhile fails its write's version check and is retried alone.
                await asyncio.sleep(0)
            node = self._view.pnodes.get(name)
            if node is None or node.status.incarnation > renewal.incarnation:
                self._renewals.drop(name)  # deleted, or re-registered since: never persist it
                continue
            if node.status.incarnation < renewal.incarnation:
                continue  # the view lags a Register; wait for it to catch up
            stored = self._view.leases.get(name)
            if stored is None:
                continue  # Register writes the lease; the view has not seen it yet
            updated = self._renewed(stored, renewal, threshold)
            if updated is not None:
                due.append(updated)
        return due

    def _renewed(
        self, stored: lease_model.PNodeLease, renewal: renewals_mod.Renewal, threshold: float
    ) -> lease_model.PNodeLease | None:
        """The lease to write for `renewal`, or None if not due (or never to be written)."""
        name = stored.name
        if stored.spec.incarnation > renewal.incarnation:
            self._renewals.drop(name)
            return None
        if stored.spec.incarnation == renewal.incarnation:
            if renewal.at <= stored.spec.renew_time:
                self._renewals.drop(name)  # already covered: never move backwards
                return None
            if renewal.at - stored.spec.renew_time < timedelta(seconds=threshold):
                return None
        updated = stored.model_copy(deep=True)
        updated.spec.incarnation = renewal.incarnation
        updated.spec.renew_time = renewal.at
        updated.spec.duration_seconds = self._config.lease_duration
        return updated

    async def _one_by_one(self, batch: list[lease_model.PNodeLease], threshold: float) -> int:
        written = 0
        for planned in batch:
            name = planned.name
            try:
                current = await self._store.get(lease_model.PNodeLease, name)
            except errors.NotFound:
                self._renewals.drop(name)
                continue
            except errors.StoreError:
                log.warning("lease %s: re-read failed; retrying next round", name, exc_info=True)
                continue
            self._view.apply_written([current])
            renewal = self._renewals.get(name)
            if renewal is None:
                continue
            updated = self._renewed(current, renewal, threshold)
            if updated is None:
                continue
            try:
                record = await self._store.update(updated)
            except errors.StoreError as exc:
                log.info("lease %s: not persisted this round (%s)", name, type(exc).__name__)
                continue
            self._persisted([record])
            written += 1
        return written

    def _persisted(self, records: list[lease_model.PNodeLease]) -> None:
        self._view.apply_written(records)
        for record in records:
            self._renewals.persisted(record.name, record.spec.incarnation, record.spec.renew_time)

    # -- running ----------------------------------------------------------------------------

    async def run(self) -> None:
        """Flush every lease/6, or at once for an urgent renewal, until cancelled; a failed
        round is logged and retried."""
        interval = self._config.lease_duration / 6
        while True:
            await self._wait_round(interval)
            self._urgent.clear()
            try:
                await self.flush()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("persisting lease renewals failed; retrying next round")

    async def _wait_round(self, interval: float) -> None:
        """Until the next round is due (`interval` on the clock) or a renewal is urgent."""
        if self._urgent.is_set():
            await asyncio.sleep(0)
            return
        sleeping = asyncio.ensure_future(self._clock.sleep(interval))
        woken = asyncio.ensure_future(self._urgent.wait())
        try:
            await asyncio.wait([sleeping, woken], return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in (sleeping, woken):
                waiter.cancel()
            await asyncio.gather(sleeping, woken, return_exceptions=True)

    def start(self) -> None:
        self._background.start(self.run)

    async def stop(self) -> None:
        """Stop the loop, then persist every renewal still pending, so a graceful shutdown
        does not make healthy PNodes look late to the other replicas."""
        await self._background.stop()
        try:
            await self.flush(force=True)
        except errors.StoreError:
            log.warning("final lease flush failed", exc_info=True)


def urgent(stored_renew_time: datetime, renewal: datetime, *, lease_duration: float) -> bool:
    """Whether a renewal at `renewal` must be persisted now rather than at the next round:
    the stored lease it would replace is half a lease old or more (it never is while this
    replica's own rounds keep it, whose lag stays under lease/2)."""
    return renewal - stored_renew_time >= timedelta(seconds=lease_duration / 2)
