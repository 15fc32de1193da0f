"""The PNode lifecycle loop: Ready → NotReady → Lost → garbage-collected.

    Ready     ──lease of the current incarnation expired──▶  NotReady   (missed_heartbeats += 1)
    NotReady  ──renewed again (level-based)──────────────▶  Ready
    NotReady  ──lost_grace passed──────────────────────────▶  Lost       (evictions += allocations)
    Lost      ──lost_retention passed, no allocations────▶  deleted    (PNode and PNodeLease)
    Lost      ──pending_retention passed, never renewed,──▶  deleted
                no allocations

A PNode is *pending* while its lease has not been renewed since it registered: no heartbeat
of its current incarnation ever arrived. An anonymous flood of registrations is exactly such
PNodes, so they are deleted `pending_retention` (default 120 s) after becoming Lost rather
than after the hour of `lost_retention` (issue 11); `is_pending` is the one rule, which the
registration cap (`controller.services.pnode_service`) counts with too.
    any       ──Deregistered and no allocations──────────▶  deleted

A Lost PNode's allocations are moved away by the network loop (which treats Lost as
"migrate"); this loop only records the phase, so the two never write the same decision. A
PNode leaves the store only once nothing is placed on it, because its record carries the
capacity accounting those allocations' transactions update.

Deregister (the agent leaving on purpose) marks the PNode draining and unschedulable and sets
the `Deregistered` condition; the network loop migrates its work like any drain, and once the
PNode holds no allocation this loop deletes it (the agent's own second Deregister may get
there first; either is fine).

Liveness comes from the PNodeLease record, plus, when wired, the renewals this replica has
accepted but not yet persisted (`local_renewal`): persisted renewals lag the real ones by up
to half a lease by design (`controller.state.leases`), and the newer of the two is the truth.
The expiry rule is `api.resources.lease.expiry`, the one the orchestrator's view uses.

Store stalls are not PNode failures. A lease and the NotReady grace do not run through the
periods in which this replica could not observe the store (`unobserved`, from the server's
`controller.state.store_watch`; the rule is `api.resources.lease.held_through`): a renewal
this replica could not read, or that the heartbeats' replica could not write, must not
count against the PNode. Each replica judges from its own observations; at most
`store_stall_max` seconds are added, so a PNode that really died is still NotReady within
lease + that, and Lost within lease + grace + twice that.

Resyncs are cheap (issue 13). The manager enqueues every PNode each `--resync-every`; with
10,000 PNodes, reading each one's PNode, lease and allocations from the store cost ~2 s of
CPU per resync, most of an idle orchestrator's. So, when wired with `cached(name)` (the
PNode and lease in the informer cache), a reconcile first looks there:

- settled: the loop remembers, for each PNode it left alone, the resource versions it
  decided from and when its next transition could fall due (`Settled`). Both records still
  at those versions before that moment: nothing it decides from has changed, and it
  requeues for that moment without computing anything (`settled_for`);
- decided from the cache: a Ready PNode whose records moved (a persisted renewal) is
  decided from the cached records; if that says "no write", it is settled again;
- otherwise (a write is due, or the PNode is not a plain Ready one) it reads the store as
  before, and every write is decided from what it read there.

The cache never runs ahead of the store, so a cached decision errs only towards reading
the store. What the fingerprint leaves out can only make the deadline later (a local
renewal, an unobserved period: both extend the lease), so a remembered deadline is never
late. A missed event is still repaired within a resync: its change shows in the cache's
versions (and the cache's own resync repairs a change the feed missed). Only a Ready PNode
that is not deregistering, or a Lost one holding nothing, is remembered: a NotReady PNode
turns Ready on a renewal the fingerprint does not carry, and one that must shed its
allocations waits on them.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime, timedelta
from typing import Protocol

from api.resources import allocation, lease, meta, pnode
from reconcilers import base as reconcile
from store import base, errors

log = logging.getLogger("dcnr.reconcilers.pnode")

READY = "Ready"
DEREGISTERED = "Deregistered"

#: How often a Lost or deregistering PNode that still holds allocations is looked at again.
#: Allocation moves also wake the loop through the view; this is the level-triggered net.
HELD_RECHECK_SECONDS = 5.0


class Timings(Protocol):
    """The timings this loop reads (`controller.config.ControlPlaneConfig` has them)."""

    @property
    def lease_duration(self) -> float: ...

    @property
    def lost_grace(self) -> float: ...

    @property
    def lost_retention(self) -> float: ...

    @property
    def pending_retention(self) -> float: ...

    @property
    def store_stall_max(self) -> float: ...


class WallClock(Protocol):
    def now(self) -> datetime: ...


@dataclasses.dataclass(frozen=True, slots=True)
class Transition:
    """What to do with one PNode now, and when its next transition could fall due."""

    #: The phase to write; None: no write. The same phase as now: only re-stamp phase_since.
    phase: pnode.PNodePhase | None = None
    #: Delete the PNode and its lease.
    delete: bool = False
    reason: str = ""
    message: str = ""
    #: Seconds until the next transition could fall due; None if none can without an event.
    requeue_after: float | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class Settled:
    """What one PNode's last full reconcile decided from, and when to look again."""

    pnode_version: int
    #: 0: no lease record (resource versions start at 1).
    lease_version: int
    due: datetime


def settled_for(
    settled: Settled | None, versions: tuple[int, int] | None, now: datetime
) -> float | None:
    """Pure: seconds to requeue without reading anything, or None when the PNode must be
    read and decided again (never settled, its records moved, or its deadline is due)."""
    if settled is None or versions is None:
        return None
    if versions != (settled.pnode_version, settled.lease_version) or settled.due <= now:
        return None
    return _seconds(settled.due - now)


def _versions(node: pnode.PNode, stored: lease.PNodeLease | None) -> tuple[int, int]:
    return node.metadata.resource_version, (
        stored.metadata.resource_version if stored is not None else 0
    )


def may_settle(node: pnode.PNode, transition: Transition, *, allocations: int) -> bool:
    """Pure: whether a reconcile that wrote nothing may be remembered (see the module doc)."""
    if transition.phase is not None or transition.delete or transition.requeue_after is None:
        return False
    if node.status.phase == "Ready":
        return not _deregistered(node)
    return node.status.phase == "Lost" and allocations == 0


def is_pending(node: pnode.PNode, expiry: datetime | None, duration: float) -> bool:
    """True if the lease that expires at `expiry` (granted for `duration` seconds per
    renewal) was last renewed no later than the current incarnation's registration."""
    registered = node.status.registered_at
    if registered is None:
        return False  # registered before this was recorded: treated as established
    if expiry is None:
        return True
    return expiry - timedelta(seconds=duration) <= registered


def compute_transition(
    node: pnode.PNode,
    stored: lease.PNodeLease | None,
    *,
    now: datetime,
    config: Timings,
    allocations: int = 0,
    local_renewal: datetime | None = None,
    unobserved: Iterable[lease.Unobserved] = (),
) -> Transition:
    """Pure: the lifecycle transition of `node` at `now`, given its lease and how many
    allocations still name it (`local_renewal` must belong to its current incarnation),
    with the lease and the grace held through the `unobserved` periods."""
    unobserved = list(unobserved)
    status = node.status
    if _deregistered(node) and allocations == 0:
        return Transition(delete=True, reason="Deregistered", message="drained after Deregister")
    since = status.phase_since
    if since is None:
        return Transition(phase=status.phase, reason="PhaseSinceMissing")
    # The stored lease's own duration, as granted by the replica that wrote it (the rule
    # and why callers choose the duration: `api.resources.lease.expiry`).
    duration = stored.spec.duration_seconds if stored is not None else config.lease_duration
    expiry = lease.expiry(
        stored, incarnation=status.incarnation, local_renewal=local_renewal, duration=duration
    )
    pending = is_pending(node, expiry, duration)
    if expiry is None:
        # Register writes PNode and lease together; without one, the lease is counted from
        # when the phase began, so a PNode that never renews still expires.
        expiry = since + timedelta(seconds=config.lease_duration)
    expiry = lease.held_through(
        expiry,
        since=expiry - timedelta(seconds=duration),
        unobserved=unobserved,
        most=config.store_stall_max,
    )
    held = HELD_RECHECK_SECONDS if _deregistered(node) else None
    if status.phase == "Ready":
        if expiry <= now:
            return Transition(
                phase="NotReady",
                reason="NodeLeaseExpired",
                message=f"lease of incarnation {status.incarnation} expired at "
                f"{expiry.isoformat()}",
            )
        return Transition(requeue_after=_min(_seconds(expiry - now), held))
    if status.phase == "NotReady":
        if expiry > now:
            return Transition(phase="Ready", reason="NodeLeaseRenewed", message="lease renewed")
        lost_at = lease.held_through(
            since + timedelta(seconds=config.lost_grace),
            since=since,
            unobserved=unobserved,
            most=config.store_stall_max,
        )
        if lost_at <= now:
            return Transition(
                phase="Lost",
                reason="PNodeLost",
                message=f"no renewal for {config.lost_grace:g}s after the lease expired; "
                f"{allocations} allocation(s) evicted",
            )
        return Transition(requeue_after=_min(_seconds(lost_at - now), held))
    # Lost: fenced for good (an expired lease is never renewed); only Register revives it.
    retention = config.pending_retention if pending else config.lost_retention
    gone_at = since + timedelta(seconds=retention)
    if gone_at > now:
        return Transition(requeue_after=_min(_seconds(gone_at - now), held))
    if allocations:
        return Transition(requeue_after=HELD_RECHECK_SECONDS)
    return Transition(
        delete=True,
        reason="GarbageCollected",
        message=f"Lost for {retention:g}s with no allocations"
        + (" and never heartbeated" if pending else ""),
    )


def _deregistered(node: pnode.PNode) -> bool:
    return any(c.type == DEREGISTERED and c.status == "True" for c in node.status.conditions)


def _seconds(delta: timedelta) -> float:
    return max(0.0, delta.total_seconds())


def _min(a: float, b: float | None) -> float:
    return a if b is None else min(a, b)


def apply_phase(
    node: pnode.PNode, transition: Transition, *, now: datetime, allocations: int
) -> pnode.PNode:
    """The PNode record after `transition` (which must carry a phase)."""
    assert transition.phase is not None
    updated = node.model_copy(deep=True)
    status = updated.status
    old_phase = status.phase
    status.phase = transition.phase
    status.phase_since = now
    if old_phase == "Ready" and transition.phase == "NotReady":
        status.missed_heartbeats += 1  # the reliability scorer's history
    if transition.phase == "Lost" and old_phase != "Lost":
        status.evictions += allocations
    if transition.phase != old_phase:
        status.conditions = meta.set_condition(
            status.conditions,
            type=READY,
            status="True" if transition.phase == "Ready" else "False",
            reason=transition.reason,
            message=transition.message,
            now=now,
        )
    return updated


Written = Callable[[Sequence[meta.Resource | None]], None]
Deleted = Callable[[type[meta.Resource], str], None]
LocalRenewal = Callable[[str, int], datetime | None]
Unobserved = Callable[[], Iterable[lease.Unobserved]]
#: name -> the PNode and its lease (None: no lease) in the informer cache; None if the
#: cache holds no such PNode. The records are shared: read them, never change them.
Cached = Callable[[str], tuple[pnode.PNode, lease.PNodeLease | None] | None]


class PNodeReconciler:
    """Applies `compute_transition` to one PNode with conditional writes.

    `on_written`/`on_deleted` receive what this loop wrote (the server wires the in-memory
    view); `local_renewal(name, incarnation)` gives this replica's unpersisted renewal;
    `unobserved()` the periods this replica could not observe the store; `cached(name)`
    the informer cache's records, which spare a reconcile that writes nothing the store.
    """

    name = "pnode"

    def __init__(
        self,
        store: base.Store,
        clock: WallClock,
        *,
        config: Timings,
        on_written: Written | None = None,
        on_deleted: Deleted | None = None,
        local_renewal: LocalRenewal | None = None,
        unobserved: Unobserved | None = None,
        cached: Cached | None = None,
    ) -> None:
        self._store = store
        self._clock = clock
        self._config = config
        self._on_written = on_written
        self._on_deleted = on_deleted
        self._local_renewal = local_renewal
        self._unobserved = unobserved
        self._cached = cached
        self._settled: dict[str, Settled] = {}

    @property
    def settled(self) -> int:
        """How many PNodes are remembered as settled."""
        return len(self._settled)

    async def reconcile(self, key: str) -> reconcile.Result:
        if self._cached is not None:
            wait = self._from_cache(key)
            if wait is not None:
                return reconcile.Result(requeue_after=wait)
        self._settled.pop(key, None)
        try:
            node = await self._store.get(pnode.PNode, key)
        except errors.NotFound:
            return reconcile.Result()  # deleted: nothing left to look after
        try:
            stored: lease.PNodeLease | None = await self._store.get(lease.PNodeLease, key)
        except errors.NotFound:
            stored = None
        held = await base.list_all(self._store, allocation.Allocation, index=("pnode", key))
        local = None
        if self._local_renewal is not None:
            local = self._local_renewal(key, node.status.incarnation)
        now = self._clock.now()
        transition = compute_transition(
            node,
            stored,
            now=now,
            config=self._config,
            allocations=len(held),
            local_renewal=local,
            # Read after the store calls above: a stall they sat through is counted.
            unobserved=self._unobserved() if self._unobserved is not None else (),
        )
        try:
            if transition.delete:
                await self._delete(node, stored, transition)
            elif transition.phase is not None:
                updated = apply_phase(node, transition, now=now, allocations=len(held))
                written = await self._store.update(updated)
                log.info(
                    "pnode %s: %s → %s (%s)",
                    key,
                    node.status.phase,
                    transition.phase,
                    transition.reason,
                )
                if self._on_written is not None:
                    self._on_written([written])
                # Look again at once: the new phase starts its own timer.
                return reconcile.Result(requeue_after=0.0)
        except errors.Conflict:
            return reconcile.Result(requeue=True)  # it moved under us: re-read and recompute
        except errors.NotFound:
            return reconcile.Result()
        if may_settle(node, transition, allocations=len(held)):
            self._settle(node, stored, transition, now)
        return reconcile.Result(requeue_after=transition.requeue_after)

    def _from_cache(self, key: str) -> float | None:
        """Seconds to requeue if the cache shows nothing to write; None: read the store."""
        assert self._cached is not None
        entry = self._cached(key)
        if entry is None:
            return None
        node, stored = entry
        now = self._clock.now()
        wait = settled_for(self._settled.get(key), _versions(node, stored), now)
        if wait is not None or node.status.phase != "Ready" or _deregistered(node):
            return wait
        local = None
        if self._local_renewal is not None:
            local = self._local_renewal(key, node.status.incarnation)
        transition = compute_transition(
            node,
            stored,
            now=now,
            config=self._config,
            local_renewal=local,
            unobserved=self._unobserved() if self._unobserved is not None else (),
        )
        if not may_settle(node, transition, allocations=0):
            return None
        self._settle(node, stored, transition, now)
        return transition.requeue_after

    def _settle(
        self,
        node: pnode.PNode,
        stored: lease.PNodeLease | None,
        transition: Transition,
        now: datetime,
    ) -> None:
        assert transition.requeue_after is not None
        pnode_version, lease_version = _versions(node, stored)
        self._settled[node.name] = Settled(
            pnode_version=pnode_version,
            lease_version=lease_version,
            due=now + timedelta(seconds=transition.requeue_after),
        )

    async def _delete(
        self, node: pnode.PNode, stored: lease.PNodeLease | None, transition: Transition
    ) -> None:
        ops: list[base.Op] = [
            base.Delete(
                pnode.PNode,
                node.name,
                resource_version=node.metadata.resource_version,
                uid=node.metadata.uid,
            )
        ]
        if stored is not None:
            ops.append(
                base.Delete(
                    lease.PNodeLease,
                    stored.name,
                    resource_version=stored.metadata.resource_version,
                    uid=stored.metadata.uid,
                )
            )
        await self._store.transact(ops)
        log.info("pnode %s: deleted (%s)", node.name, transition.reason)
        if self._on_deleted is not None:
            self._on_deleted(pnode.PNode, node.name)
            if stored is not None:
                self._on_deleted(lease.PNodeLease, node.name)
