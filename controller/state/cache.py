"""The record cache: PNodes, their leases, allocations and networks in dicts, with indexes.

Records only ever move forward: an older resource_version of a record never replaces a
newer one, whichever path brought it (`put`). Every change that does land, and every
removal, is told to `on_change(old, new)` (None: absent) after the tables and indexes
show it, so what it is told is already what a reader finds.

Allocations are indexed by PNode, by network and by (network, VNode): heartbeats read one
PNode's, the network signals one network's, resolution one VNode's replicas.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from typing import cast

from api.resources import allocation, lease, meta, pnode
from api.resources import network as net_model

ChangeCallback = Callable[[meta.Resource | None, meta.Resource | None], None]

#: The kinds the cache holds.
KINDS: tuple[type[meta.Resource], ...] = (
    pnode.PNode,
    lease.PNodeLease,
    allocation.Allocation,
    net_model.Network,
)
KIND_BY_NAME: dict[str, type[meta.Resource]] = {kind.KIND: kind for kind in KINDS}


class Cache:
    def __init__(self, on_change: ChangeCallback) -> None:
        self._on_change = on_change
        self.pnodes: dict[str, pnode.PNode] = {}
        self.leases: dict[str, lease.PNodeLease] = {}
        self.allocations: dict[str, allocation.Allocation] = {}
        self.networks: dict[str, net_model.Network] = {}
        self._by_pnode: defaultdict[str, set[str]] = defaultdict(set)
        self._by_network: defaultdict[str, set[str]] = defaultdict(set)
        #: (network, vnode) → allocation names: resolution reads one VNode's replicas.
        self._by_vnode: defaultdict[tuple[str, str], set[str]] = defaultdict(set)
        #: KIND → its table, for `holds` (asked once per feed change).
        self._by_kind: dict[str, dict[str, meta.Resource]] = {
            pnode.PNode.KIND: cast(dict[str, meta.Resource], self.pnodes),
            lease.PNodeLease.KIND: cast(dict[str, meta.Resource], self.leases),
            allocation.Allocation.KIND: cast(dict[str, meta.Resource], self.allocations),
            net_model.Network.KIND: cast(dict[str, meta.Resource], self.networks),
        }

    def table(self, kind: type[meta.Resource]) -> dict[str, meta.Resource] | None:
        tables = {
            pnode.PNode: self.pnodes,
            lease.PNodeLease: self.leases,
            allocation.Allocation: self.allocations,
            net_model.Network: self.networks,
        }
        # Each dict holds only its own kind: put files a record by its type.
        return cast(dict[str, meta.Resource] | None, tables.get(kind))

    def holds(self, kind: str, name: str, uid: str, resource_version: int) -> bool:
        """Whether the record of this uid is held at this resource_version or newer: then
        `put` of it would change nothing, so a change feed's copy need not be parsed.

        Only reads (two dict lookups and two attributes), so the store may ask it on its
        worker thread (`base.Store.changes`' `held`) while the event loop writes."""
        table = self._by_kind.get(kind)
        held = None if table is None else table.get(name)
        return (
            held is not None
            and held.metadata.uid == uid
            and held.metadata.resource_version >= resource_version
        )

    def put(self, record: meta.Resource) -> None:
        table = self.table(type(record))
        if table is None:
            return
        old = table.get(record.name)
        if (
            old is not None
            and old.metadata.uid == record.metadata.uid
            and old.metadata.resource_version >= record.metadata.resource_version
        ):
            return  # never move a record backwards
        meta.share_fields_sets(record)  # held as long as it is current: keep it small
        table[record.name] = record
        self._changed(old, record)

    def forget(self, record: meta.Resource) -> None:
        table = self.table(type(record))
        if table is None or record.name not in table:
            return
        del table[record.name]
        self._changed(record, None)

    def _changed(self, old: meta.Resource | None, new: meta.Resource | None) -> None:
        for rec in (old, new):
            if isinstance(rec, allocation.Allocation):
                self._by_pnode[rec.spec.pnode].discard(rec.name)
                self._by_network[rec.spec.network].discard(rec.name)
                self._by_vnode[(rec.spec.network, rec.spec.vnode)].discard(rec.name)
        if isinstance(new, allocation.Allocation):
            self._by_pnode[new.spec.pnode].add(new.name)
            self._by_network[new.spec.network].add(new.name)
            self._by_vnode[(new.spec.network, new.spec.vnode)].add(new.name)
        self._on_change(old, new)

    # -- queries ----------------------------------------------------------------------------

    def allocations_on(self, pnode_name: str) -> list[allocation.Allocation]:
        names = sorted(self._by_pnode.get(pnode_name, ()))
        return [self.allocations[n] for n in names]

    def allocations_of(self, network_name: str) -> list[allocation.Allocation]:
        names = sorted(self._by_network.get(network_name, ()))
        return [self.allocations[n] for n in names]

    def allocations_of_vnode(self, network_name: str, vnode: str) -> list[allocation.Allocation]:
        names = self._by_vnode.get((network_name, vnode), ())
        return [self.allocations[n] for n in names]

    def networks_on(self, pnode_name: str) -> set[str]:
        """Networks with an allocation on the PNode."""
        return {self.allocations[a].spec.network for a in self._by_pnode.get(pnode_name, ())}

    def hosts(self, pnode_name: str, network_name: str) -> bool:
        """Whether the PNode holds an allocation of the network (resolution's authorization)."""
        return any(
            self.allocations[a].spec.network == network_name
            for a in self._by_pnode.get(pnode_name, ())
        )

    def pnodes_of(self, network_name: str) -> set[str]:
        """PNodes hosting an allocation of the network."""
        return {self.allocations[a].spec.pnode for a in self._by_network.get(network_name, ())}
