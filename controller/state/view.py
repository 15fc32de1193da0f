"""The in-memory view: what the hot paths (heartbeat, resolution) read instead of the store.

Heartbeats and resolutions must not cost a store read each (DESIGN: thousands per second
against a store that does hundreds). The view holds PNodes, their leases, allocations and
networks in dicts, kept fresh two ways:

- write-through: this replica's own writes are applied the moment they succeed
  (`apply_written`), so an assignment it placed reaches its agent at once;
- refresh: a full re-read of the store every `view_refresh` seconds picks up other
  replicas' writes. PNodes and leases are read before allocations, so the allocations
  are at least as new as the `assignments_version` read with them: an agent is never
  told a version whose set it was not shown.

Records only ever move forward: an older resource_version of a record never replaces a
newer one, whichever path brought it.

Liveness is judged at the moment of the question, from the lease's expiry (the newest of
the persisted renewal and the renewals this replica received but has not yet persisted),
so an expired lease is never answered as live, however fresh the view.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime, timedelta
from typing import cast

from api.resources import allocation, lease, meta, pnode
from api.resources import network as net_model
from controller import config as config_mod
from controller.runtime import clock as clock_mod
from store import base

log = logging.getLogger("dcnr.view")


class Signal:
    """A counter that waiters can block on until it moves past what they saw."""

    def __init__(self) -> None:
        self.value = 0
        self._changed = asyncio.Event()

    def bump(self) -> None:
        self.value += 1
        self._changed.set()
        self._changed = asyncio.Event()

    async def wait_past(self, seen: int, *, within: float | None = None) -> int:
        """The value once it differs from `seen`, or after `within` seconds at the latest."""
        if self.value != seen:
            return self.value
        event = self._changed
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), within)
        return self.value


ChangeCallback = Callable[[meta.Resource | None, meta.Resource | None], None]


@dataclasses.dataclass(frozen=True, slots=True)
class Assignment:
    allocation: allocation.Allocation
    network: net_model.Network
    vnode: net_model.VNodeSpec


@dataclasses.dataclass(frozen=True, slots=True)
class AssignmentSet:
    version: int
    assignments: tuple[Assignment, ...]


#: The share of an assignment set's version left to the hosted networks' tiebreak generations.
GENERATION_SPAN = 1 << 20


def set_version(node: pnode.PNode, entries: Iterable[Assignment]) -> int:
    """The version an agent is told: it must grow whenever what the agent is shown changes.

    The PNode's own `assignments_version` is bumped with each of its allocations' writes;
    but an assignment also carries its neighbours' replica counts, which change when a
    tiebreaker replica joins or leaves another PNode, with no write to this one. So the
    version is `assignments_version * GENERATION_SPAN + the sum of the hosted networks'
    tiebreak_generation` (capped below the span). It only grows: with `assignments_version`
    unchanged the hosted networks are the same (hosting one more or one fewer is an
    allocation write, which bumps it) and each generation only grows; and a bump of
    `assignments_version` outweighs any drop of the sum."""
    networks = {a.network.name: a.network.status.tiebreak_generation for a in entries}
    generations = min(sum(networks.values()), GENERATION_SPAN - 1)
    return node.status.assignments_version * GENERATION_SPAN + generations


@dataclasses.dataclass(frozen=True, slots=True)
class Endpoint:
    pnode: str
    address: str
    replica: int
    epoch: int


@dataclasses.dataclass(slots=True)
class _Renewal:
    incarnation: int
    at: datetime


class View:
    def __init__(
        self,
        store: base.Store,
        clock: clock_mod.Clock,
        *,
        config: config_mod.ControlPlaneConfig,
    ) -> None:
        self._store = store
        self._clock = clock
        self._config = config
        self.pnodes: dict[str, pnode.PNode] = {}
        self.leases: dict[str, lease.PNodeLease] = {}
        self.allocations: dict[str, allocation.Allocation] = {}
        self.networks: dict[str, net_model.Network] = {}
        self._by_pnode: defaultdict[str, set[str]] = defaultdict(set)
        self._by_network: defaultdict[str, set[str]] = defaultdict(set)
        #: (network, vnode) → allocation names: resolution reads one VNode's replicas.
        self._by_vnode: defaultdict[tuple[str, str], set[str]] = defaultdict(set)
        self._renewals: dict[str, _Renewal] = {}
        #: (kind, name) → monotonic time of this replica's last write or delete of it.
        self._local: dict[tuple[str, str], float] = {}
        self._pnode_signals: defaultdict[str, Signal] = defaultdict(Signal)
        self._network_signals: defaultdict[str, Signal] = defaultdict(Signal)
        #: Bumped on any change at all (watchers of everything, tests).
        self.changed = Signal()
        self.refreshed_at: datetime | None = None
        self._subscribers: list[ChangeCallback] = []
        self._task: asyncio.Task[None] | None = None

    def subscribe(self, callback: ChangeCallback) -> None:
        """Call `callback(old, new)` on every change of a record (None: absent), from any
        path. Events only produce keys: the manager wires this to enqueue reconciles."""
        self._subscribers.append(callback)

    # -- keeping fresh ----------------------------------------------------------------------

    async def refresh(self) -> None:
        """Re-read everything from the store; records deleted elsewhere disappear.

        A record this replica wrote or deleted after the re-read began is left as written:
        the re-read may predate it, and must not undo it until the next one.
        """
        started = self._clock.monotonic()
        pnodes = await base.list_all(self._store, pnode.PNode)
        leases = await base.list_all(self._store, lease.PNodeLease)
        allocations = await base.list_all(self._store, allocation.Allocation)
        networks = await base.list_all(self._store, net_model.Network)
        for kind, fresh in (
            (pnode.PNode, pnodes),
            (lease.PNodeLease, leases),
            (allocation.Allocation, allocations),
            (net_model.Network, networks),
        ):
            self._replace(kind, fresh, started)
        self._local = {key: at for key, at in self._local.items() if at >= started}
        self.refreshed_at = self._clock.now()

    def _replace(
        self, kind: type[meta.Resource], fresh: Sequence[meta.Resource], started: float
    ) -> None:
        table = self._table(kind)
        assert table is not None
        seen = {record.name for record in fresh}
        for name in [n for n in table if n not in seen]:
            if self._local.get((kind.KIND, name), -1.0) < started:
                self._forget(table[name])
        for record in fresh:
            if self._local.get((kind.KIND, record.name), -1.0) < started:
                self._put(record)

    async def run(self) -> None:
        """Refresh every `view_refresh` seconds until cancelled; failures are logged."""
        while True:
            try:
                await self.refresh()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("view refresh failed; serving the last good view")
            await self._clock.sleep(self._config.view_refresh)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self.run(), name="view-refresh")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def apply_written(self, records: Iterable[meta.Resource | None]) -> None:
        """Write-through of records this replica has just written (None entries skipped)."""
        for record in records:
            if record is not None:
                self._local[(record.KIND, record.name)] = self._clock.monotonic()
                self._put(record)

    def apply_deleted(self, kind: type[meta.Resource], name: str) -> None:
        table = self._table(kind)
        self._local[(kind.KIND, name)] = self._clock.monotonic()
        if table is not None and name in table:
            self._forget(table[name])

    # -- records ----------------------------------------------------------------------------

    def _table(self, kind: type[meta.Resource]) -> dict[str, meta.Resource] | None:
        tables = {
            pnode.PNode: self.pnodes,
            lease.PNodeLease: self.leases,
            allocation.Allocation: self.allocations,
            net_model.Network: self.networks,
        }
        # Each dict holds only its own kind: _put files a record by its type.
        return cast(dict[str, meta.Resource] | None, tables.get(kind))

    def _put(self, record: meta.Resource) -> None:
        table = self._table(type(record))
        if table is None:
            return
        old = table.get(record.name)
        if (
            old is not None
            and old.metadata.uid == record.metadata.uid
            and old.metadata.resource_version >= record.metadata.resource_version
        ):
            return  # never move a record backwards
        table[record.name] = record
        self._changed(old, record)

    def _forget(self, record: meta.Resource) -> None:
        table = self._table(type(record))
        if table is None or record.name not in table:
            return
        del table[record.name]
        self._changed(record, None)

    def _changed(self, old: meta.Resource | None, new: meta.Resource | None) -> None:
        either = new if new is not None else old
        if isinstance(either, allocation.Allocation):
            for rec in (old, new):
                if isinstance(rec, allocation.Allocation):
                    self._by_pnode[rec.spec.pnode].discard(rec.name)
                    self._by_network[rec.spec.network].discard(rec.name)
                    self._by_vnode[(rec.spec.network, rec.spec.vnode)].discard(rec.name)
            if isinstance(new, allocation.Allocation):
                self._by_pnode[new.spec.pnode].add(new.name)
                self._by_network[new.spec.network].add(new.name)
                self._by_vnode[(new.spec.network, new.spec.vnode)].add(new.name)
            for rec in (old, new):
                if isinstance(rec, allocation.Allocation):
                    self._network_signals[rec.spec.network].bump()
                    self._pnode_signals[rec.spec.pnode].bump()
        elif isinstance(either, pnode.PNode):
            self._pnode_signals[either.name].bump()
            for name in {self.allocations[a].spec.network for a in self._by_pnode[either.name]}:
                self._network_signals[name].bump()
        elif isinstance(either, lease.PNodeLease):
            for name in {self.allocations[a].spec.network for a in self._by_pnode[either.name]}:
                self._network_signals[name].bump()
        elif isinstance(either, net_model.Network):
            self._network_signals[either.name].bump()
            for name in self._by_network.get(either.name, ()):
                self._pnode_signals[self.allocations[name].spec.pnode].bump()
        self.changed.bump()
        for callback in self._subscribers:
            try:
                callback(old, new)
            except Exception:
                log.exception("view subscriber failed")

    # -- leases -----------------------------------------------------------------------------

    def note_renewal(self, name: str, incarnation: int, at: datetime) -> None:
        """A heartbeat this replica accepted; it counts for liveness before it is persisted."""
        node = self.pnodes.get(name)
        if node is not None and node.status.incarnation != incarnation:
            # It would count for nothing (lease_expiry reads the current incarnation only),
            # and a late one from a fenced incarnation must not displace the current one's.
            return
        current = self._renewals.get(name)
        if current is None or current.incarnation != incarnation or current.at < at:
            self._renewals[name] = _Renewal(incarnation, at)

    def lease_expiry(self, name: str) -> datetime | None:
        """When the PNode's lease of its current incarnation expires; None if it has none."""
        node = self.pnodes.get(name)
        if node is None:
            return None
        incarnation = node.status.incarnation
        renewed: datetime | None = None
        stored = self.leases.get(name)
        if stored is not None and stored.spec.incarnation == incarnation:
            renewed = stored.spec.renew_time
        local = self._renewals.get(name)
        if local is not None and local.incarnation == incarnation:
            renewed = local.at if renewed is None else max(renewed, local.at)
        if renewed is None:
            return None
        return renewed + timedelta(seconds=self._config.lease_duration)

    def is_live(self, name: str, now: datetime) -> bool:
        node = self.pnodes.get(name)
        if node is None or node.status.phase != "Ready":
            return False
        expiry = self.lease_expiry(name)
        return expiry is not None and expiry > now

    # -- queries ----------------------------------------------------------------------------

    def pnode_signal(self, name: str) -> Signal:
        return self._pnode_signals[name]

    def network_signal(self, name: str) -> Signal:
        return self._network_signals[name]

    def allocations_on(self, pnode_name: str) -> list[allocation.Allocation]:
        names = sorted(self._by_pnode.get(pnode_name, ()))
        return [self.allocations[n] for n in names]

    def allocations_of(self, network_name: str) -> list[allocation.Allocation]:
        names = sorted(self._by_network.get(network_name, ()))
        return [self.allocations[n] for n in names]

    def assignment_set(self, pnode_name: str) -> AssignmentSet | None:
        """The PNode's desired assignments: its allocations for its current incarnation."""
        node = self.pnodes.get(pnode_name)
        if node is None:
            return None
        entries = []
        for alloc in self.allocations_on(pnode_name):
            if alloc.spec.pnode_incarnation != node.status.incarnation:
                continue  # placed for an incarnation the agent has dropped; being re-issued
            net = self.networks.get(alloc.spec.network)
            vnode = net.vnode(alloc.spec.vnode) if net is not None else None
            if net is None or vnode is None:
                continue  # being stopped
            entries.append(Assignment(alloc, net, vnode))
        return AssignmentSet(set_version(node, entries), tuple(entries))

    def endpoints(self, network_name: str, vnode: str, now: datetime) -> list[Endpoint]:
        """Live endpoints of a VNode: current allocations on PNodes whose lease holds now."""
        found = []
        for name in self._by_vnode.get((network_name, vnode), ()):
            spec = self.allocations[name].spec
            if not self.is_live(spec.pnode, now):
                continue
            node = self.pnodes[spec.pnode]
            if spec.pnode_incarnation != node.status.incarnation:
                continue  # its agent dropped this epoch when it re-registered
            found.append(Endpoint(spec.pnode, node.spec.address, spec.replica, spec.epoch))
        return sorted(found, key=lambda e: e.replica)
