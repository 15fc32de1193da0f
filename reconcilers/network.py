"""The network loop: read a Network, its Allocations and the PNodes; plan; apply; report.

The plan is computed by `reconcilers.network_plan` (pure; the rule table is documented
there). This module is the small I/O half: it applies each action as ONE store transaction
(a run of placements or of migrations: as many as fit in one, see
`reconcilers.network_apply`) that writes
the allocation together with the capacity accounting of every PNode it touches
(`status.allocated` adjusted, `status.assignments_version` bumped), each op conditioned on
the resource_version and uid that were read, so that no interleaving of replicas can
over-commit a PNode or give a slot two allocations (the slot name is the record's key).

    Place    Create(allocation) + Update(pnode: charge) + Check(network)
    Migrate  Update(allocation -> new pnode, epoch+1) + Update(new pnode: charge)
             + Update(old pnode: release; even when Lost, so accounting stays exact)
             + Check(network)
    Reissue  Update(allocation, epoch+1) + Update(pnode: charge the resource delta)
             + Check(network)
    Stop     Delete(allocation) + Update(pnode: release) [+ Update(network: remember the
             slot's epoch in status.slot_epochs)]

The Check on the network means no allocation is ever written from a plan of a network
that has since changed (been deleted, or re-created under the same name).

Any Conflict, NotFound or AlreadyExists while applying means another writer got there
first: stop applying and requeue; the next pass re-reads and re-plans (level-triggered).

Deletion: a Network carries the finalizer FINALIZER from creation; once it has a deletion
timestamp the plan stops every allocation, and when none remain the finalizer is removed
and the record deleted. Allocations whose Network is already gone (orphans, e.g. from a
replica that raced a deletion) are stopped when the loop finds the Network missing.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Protocol

from api.resources import allocation as allocation_model
from api.resources import meta
from api.resources import network as network_model
from api.resources import pnode as pnode_model
from reconcilers import (
    base,
    network_actions,
    network_apply,
    network_events,
    network_plan,
    network_status,
    slots,
)
from scheduler import config as scheduler_config
from scheduler import model as scheduler_model
from store import base as store_base
from store import errors

log = logging.getLogger("dcnr.reconcilers.network")

#: Held by every Network until its allocations are stopped.
FINALIZER = "dcnr.io/allocations"


Allocation = allocation_model.Allocation
Network = network_model.Network
PNode = pnode_model.PNode
#: The informer's PNodes by name (the server passes its view's table).
PNodeSource = Callable[[], Mapping[str, PNode]]


class Records(Protocol):
    """The informer's Networks and their Allocations (the server passes its view)."""

    @property
    def networks(self) -> Mapping[str, Network]: ...

    def allocations_of(self, network_name: str) -> list[Allocation]: ...


class ChangedPNodes:
    """The names of the PNodes the informer changed since the network loop last asked.

    `note` is the informer's change callback (`View.subscribe`); `take` hands the names
    over and starts afresh. Until the first `take` nothing is known of what came before, so
    the first answer is None: look at every PNode. At most one name per PNode is held."""

    def __init__(self) -> None:
        self._names: set[str] | None = None

    def note(self, old: meta.Resource | None, new: meta.Resource | None) -> None:
        record = new if new is not None else old
        if isinstance(record, PNode) and self._names is not None:
            self._names.add(record.metadata.name)

    def take(self) -> set[str] | None:
        names, self._names = self._names, set()
        return names


class Settings(Protocol):
    """What this loop reads of its configuration: `network_actions.PlanConfig` and
    `controller.config.ControlPlaneConfig` both have it."""

    @property
    def unschedulable_retry(self) -> float: ...


class Clock(Protocol):
    """The part of `controller.runtime.clock.Clock` this loop reads (it imports no controller)."""

    def now(self) -> datetime: ...


class NetworkReconciler:
    name = "network"

    def __init__(
        self,
        store: store_base.Store,
        clock: Clock,
        *,
        config: Settings = network_actions.DEFAULT_CONFIG,
        scheduler: scheduler_config.Config | None = None,
        on_written: network_apply.Written | None = None,
        on_deleted: network_apply.Deleted | None = None,
        on_replaced: Callable[[str], None] | None = None,
        on_event: Callable[[base.Occurrence], None] | None = None,
        pnodes: PNodeSource | None = None,
        pnode_changes: ChangedPNodes | None = None,
        records: Records | None = None,
    ) -> None:
        """`scheduler` defaults to the PlanConfig's when `config` is one, else the default.
        `on_replaced(reason)` is told of every slot moved or re-issued, for metrics;
        `on_event` of every action applied and of unschedulable slots, for people
        (`reconcilers.network_events`). `pnodes()`: the informer's PNodes, planned against
        instead of listing every PNode from the store each pass (they may lag the store;
        every write is conditioned on the version planned from, so a stale one only
        conflicts and the pass is planned again). `pnode_changes`: told by the informer of
        every PNode change, so a pass looks only at the PNodes changed since the last one
        (without it, every pass walks every PNode). `records`: the informer's Networks and
        Allocations, planned from instead of reading the Network and listing its
        Allocations from the store each pass (see `_read` for when the store is read
        anyway)."""
        if scheduler is None:
            scheduler = scheduler_config.DEFAULT
            if isinstance(config, network_actions.PlanConfig):
                scheduler = config.scheduler
        self._store = store
        self._clock = clock
        self._config = network_actions.PlanConfig(
            scheduler=scheduler, unschedulable_retry=config.unschedulable_retry
        )
        self._on_written = on_written
        self._on_deleted = on_deleted
        self._on_replaced = on_replaced
        self._on_event = on_event
        self._pnodes = pnodes
        self._changes = pnode_changes
        self._records = records
        #: Scheduler views of the PNodes, converted once per record version (issue 13).
        self._views = scheduler_model.ViewCache()
        #: Each Network's VNode hashes and graph, derived once per generation (issue 13).
        self._specs = slots.SpecCache()
        #: Networks whose last pass met a write that lost (someone else's write, or a stale
        #: read): their next pass reads the store, not the informer.
        self._read_through: set[str] = set()

    async def reconcile(self, key: str) -> base.Result:
        read = await self._read(key)
        if read is None:
            self._specs.forget(key)
            return await self._stop_orphans(key)
        network, allocations = read
        pnodes: Mapping[str, PNode]
        if self._pnodes is not None:
            held = await self._held_pnodes(allocations, self._pnodes())
            # From here to the plan nothing awaits: what changed, the informer's table and
            # the views are of one moment. Taken before the plan, a change made later is
            # still there for the next pass. The plan reads the informer's table in place;
            # the Applier, which awaits, copies the records the plan's writes touch.
            changed = None if self._changes is None else self._changes.take()
            live = self._pnodes()
            # Not a copy of every PNode (at 100,000 PNodes that was a walk per pass) unless
            # the informer lacks one that holds an allocation, which is rare and brief.
            pnodes = {**held, **live} if held else live
            views = self._views.views(live, changed=changed, extra=held)
        else:  # no informer (tools, some tests): every PNode from the store, every pass
            listed = await store_base.list_all(self._store, PNode)
            pnodes = {p.metadata.name: p for p in listed}
            views = self._views.views(pnodes)
        derived = self._specs.derived(network)
        plan = network_plan.compute_plan(
            network,
            allocations,
            pnodes,
            seed=derived.seed,
            config=self._config,
            now=self._clock.now(),
            views=views,
            snapshots=self._views,
            derived=derived,
        )
        applier = network_apply.Applier(
            self._store,
            network,
            network_apply.touched(plan.writes, pnodes),
            self._on_written,
            self._on_deleted,
        )
        for action in network_apply.grouped(plan.writes):
            try:
                await applier.apply(action)
            except (errors.Conflict, errors.NotFound, errors.AlreadyExists) as exc:
                log.info("network %s: %s; replanning: %s", key, type(exc).__name__, exc)
                self._read_through.add(key)
                return base.Result(requeue=True)
            except network_apply.OverCommit as exc:
                log.error("network %s: %s; replanning", key, exc)
                self._read_through.add(key)
                return base.Result(requeue=True)
            for single in _actions(action):
                if self._on_replaced is not None and isinstance(
                    single, network_actions.Migrate | network_actions.Reissue
                ):
                    self._on_replaced(single.reason)
                self._tell(network_events.for_action(key, single))
        assert applier.network is not None
        network = applier.network
        if network.metadata.deletion_timestamp is not None:
            return await self._terminate(network, plan.status)
        if plan.status != network.status:
            # Shallow: the store writes a new record from it and never changes its input;
            # a deep copy of a 1,000-VNode spec was a sixth of a pass (issue 13).
            network = network.model_copy(update={"status": plan.status})
            try:
                applier.written([await self._store.update(network)])
            except (errors.Conflict, errors.NotFound):
                self._read_through.add(key)
                return base.Result(requeue=True)
        if plan.unschedulable:
            self._tell(
                network_events.unschedulable(key, network_status.message(plan.unschedulable))
            )
            return base.Result(requeue_after=self._config.unschedulable_retry)
        return base.Result()

    async def _read(self, key: str) -> tuple[Network, list[Allocation]] | None:
        """The Network and its Allocations (None: no such Network).

        From the informer when it holds the Network, unless the key's last pass lost a
        write; else from the store. The informer may lag the store (another replica's
        writes arrive with its feed), which is safe because every write of the pass is
        conditioned on what was read (the Network's uid and resource_version, each
        Allocation's, each PNode's): a plan from a stale read only conflicts, and the
        next pass reads the store (level-triggered, as for a stale PNode). A Network the
        informer lacks is read from the store, never taken for deleted: its Allocations
        would be stopped as orphans. And the informer's change of a Network or of an
        Allocation wakes the loop again (`controller.runtime.events`), so a pass planned
        from a copy that lagged and found nothing to write is planned again when it
        catches up."""
        records = self._records
        if records is not None and key not in self._read_through:
            network = records.networks.get(key)
            if network is not None:
                return network, records.allocations_of(key)
        self._read_through.discard(key)
        try:
            network = await self._store.get(Network, key)
        except errors.NotFound:
            return None
        allocations = await store_base.list_all(self._store, Allocation, index=("network", key))
        return network, allocations

    async def _held_pnodes(
        self, allocations: list[Allocation], pnodes: Mapping[str, PNode]
    ) -> dict[str, PNode]:
        """Read from the store the PNodes holding `allocations` that the informer has not
        brought yet (one registered a moment ago and placed on by another replica): the plan
        must not take them for gone ("pnode-gone" migrates, and would release nothing)."""
        held: dict[str, PNode] = {}
        # Not `set - pnodes.keys()`: that copies every key of the table (issue 13).
        missing = {a.spec.pnode for a in allocations if a.spec.pnode not in pnodes}
        for name in sorted(missing):
            with contextlib.suppress(errors.NotFound):
                held[name] = await self._store.get(PNode, name)
        return held

    def _tell(self, occurrence: base.Occurrence | None) -> None:
        if occurrence is not None and self._on_event is not None:
            self._on_event(occurrence)

    async def _terminate(
        self, network: Network, status: network_model.NetworkStatus
    ) -> base.Result:
        """Every allocation was stopped: delete the record, or, while someone else's
        finalizer holds it, drop ours and say Terminating."""
        # Re-list rather than trust the plan: an allocation created by a replica that read
        # the network before its deletion must be stopped before the record goes.
        left = await store_base.list_all(
            self._store, Allocation, index=("network", network.metadata.name)
        )
        meta_ = network.metadata
        others = [f for f in meta_.finalizers if f != FINALIZER]
        try:
            if not left and not others:
                await self._store.delete(
                    Network, meta_.name, resource_version=meta_.resource_version, uid=meta_.uid
                )
                if self._on_deleted is not None:
                    self._on_deleted(Network, meta_.name)
                return base.Result()
            updated = network.model_copy(deep=True)
            updated.status = status
            if not left:
                updated.metadata.finalizers = others
            if updated != network:
                written = await self._store.update(updated)
                if self._on_written is not None:
                    self._on_written([written])
        except (errors.Conflict, errors.NotFound):
            return base.Result(requeue=True)
        return base.Result(requeue=True) if left else base.Result()

    async def _stop_orphans(self, key: str) -> base.Result:
        orphans = await store_base.list_all(self._store, Allocation, index=("network", key))
        if not orphans:
            return base.Result()
        pnodes: list[PNode] = []
        for name in sorted({a.spec.pnode for a in orphans}):
            with contextlib.suppress(errors.NotFound):
                pnodes.append(await self._store.get(PNode, name))
        applier = network_apply.Applier(
            self._store, None, pnodes, self._on_written, self._on_deleted
        )
        for alloc in orphans:
            try:
                await applier.apply(network_actions.Stop(alloc, "network gone"))
            except (errors.Conflict, errors.NotFound):
                return base.Result(requeue=True)
        log.info("network %s: stopped %d orphan allocations", key, len(orphans))
        return base.Result()


async def networks_on_pnode(store: store_base.Store, pnode: str) -> set[str]:
    """Networks with an allocation on `pnode`: the ones to reconcile when it changes."""
    found = await store_base.list_all(store, Allocation, index=("pnode", pnode))
    return {a.spec.network for a in found}


def _actions(step: network_apply.Step) -> list[network_actions.Action]:
    """The actions of one applied step (a run of placements or migrations is a tuple)."""
    return list(step) if isinstance(step, tuple) else [step]
