"""The scheduler's own view of PNodes and requests, and converters from `api.resources`.

Why a separate view instead of the pydantic models: placement reads a handful of fields of
thousands of PNodes many times per batch, and wants them as plain ints and frozen tuples
(cheap attribute access, hashable capability signatures, no validation on every copy).
The converters are the only place that knows how `api.resources` spells things.
"""

from __future__ import annotations

import bisect
import dataclasses
import ipaddress
from collections.abc import Iterable, Mapping
from typing import TypeAlias

from api.resources import allocation as allocation_model
from api.resources import amounts as amounts_mod
from api.resources import network as network_model
from api.resources import pnode as pnode_model

#: Accelerator counts by type, sorted by type so equal inventories compare and hash equal.
Accelerators: TypeAlias = amounts_mod.Accelerators

#: Consecutive valid results at which trust reaches 0.5; trust saturates towards 1 beyond.
TRUST_HALF = 50


def count(accelerators: Accelerators, kind: str) -> int:
    for name, number in accelerators:
        if name == kind:
            return number
    return 0


def trust_score(consecutive_valid: int, strikes: int, *, bugged: bool) -> float:
    """Trust in [0, 1): earned slowly by valid results, lost quickly by strikes.

    Saturating (v / (v + TRUST_HALF)) so no PNode ever reaches full trust, and divided by
    1 + strikes so a PNode that lied recently ranks below an honest newcomer's peers.
    """
    if bugged or consecutive_valid <= 0:
        return 0.0
    return consecutive_valid / (consecutive_valid + TRUST_HALF) / (1 + max(strikes, 0))


@dataclasses.dataclass(frozen=True, slots=True)
class NodeView:
    """One PNode as placement sees it: flags, capacity, what is already allocated, history."""

    name: str
    ready: bool = True
    schedulable: bool = True
    draining: bool = False
    bugged: bool = False
    cpu_capacity: int = 0
    memory_capacity: int = 0
    accelerators: Accelerators = ()
    cpu_allocated: int = 0
    memory_allocated: int = 0
    accelerators_allocated: Accelerators = ()
    trust: float = 0.0
    missed_heartbeats: int = 0
    evictions: int = 0
    datasets: frozenset[str] = frozenset()
    labels: tuple[tuple[str, str], ...] = ()
    #: Hints of who runs it (`operator_hints`): PNodes sharing any may be one operator.
    operators: frozenset[str] = frozenset()
    #: Everything the capability filters read (flags, capacity, allocated), so PNodes that
    #: look alike are checked once. A string because str caches its hash: the signature is
    #: looked up once per evaluated PNode, and hashing a nested tuple each time costs more
    #: than the checks it saves.
    signature: str = dataclasses.field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        flags = "".join(
            "1" if flag else "0"
            for flag in (self.ready, self.schedulable, self.draining, self.bugged)
        )
        object.__setattr__(
            self,
            "signature",
            f"{flags}|{self.cpu_capacity}|{self.memory_capacity}|{self.accelerators}"
            f"|{self.cpu_allocated}|{self.memory_allocated}|{self.accelerators_allocated}",
        )

    @property
    def allocated(self) -> amounts_mod.Amounts:
        return amounts_mod.Amounts(
            self.cpu_allocated, self.memory_allocated, self.accelerators_allocated
        )

    def charged(self, change: amounts_mod.Amounts, sign: int) -> NodeView:
        """This node with `change` charged (sign +1) or released (sign -1), by the one
        capacity arithmetic (`api.resources.amounts`)."""
        after = amounts_mod.charged(self.allocated, change, sign)
        return dataclasses.replace(
            self,
            cpu_allocated=after.cpu,
            memory_allocated=after.memory,
            accelerators_allocated=after.accelerators,
        )

    def with_allocation(self, request: Request) -> NodeView:
        """This node after `request` is placed on it (used by batch accounting)."""
        return self.charged(request.amounts, +1)


@dataclasses.dataclass(frozen=True, slots=True)
class Request:
    """One VNode replica slot to place.

    `avoid`: PNodes hosting other replicas of the same VNode (hard anti-affinity, so one
    PNode's death never takes out every replica). `near`: PNodes hosting the VNode's graph
    neighbours (soft affinity, so tensors cross fewer machines). `neighbours`: the names of
    those neighbours in the same network, so a batch (`placement.place_all`) adds to `near`
    the PNodes it placed them on earlier in the same plan.
    """

    network: str
    vnode: str
    replica: int = 0
    cpu: int = 0
    memory: int = 0
    accelerator: str | None = None
    accelerator_count: int = 0
    critical: bool = False
    dataset: str | None = None
    avoid: frozenset[str] = frozenset()
    near: frozenset[str] = frozenset()
    #: Operator hints of the PNodes in `avoid` (filled in by placement from its snapshot):
    #: a replica preferably goes to a PNode sharing none, so that two PNodes of one
    #: operator never hold both replicas a comparison relies on.
    avoid_operators: frozenset[str] = frozenset()
    neighbours: frozenset[str] = frozenset()

    @property
    def key(self) -> str:
        return allocation_model.slot_name(self.network, self.vnode, self.replica)

    @property
    def amounts(self) -> amounts_mod.Amounts:
        """What placing this request charges its PNode."""
        charge = [] if self.accelerator is None else [(self.accelerator, self.accelerator_count)]
        return amounts_mod.Amounts(self.cpu, self.memory, amounts_mod.accelerators(charge))

    @property
    def shape(self) -> tuple[int, int, str | None, int]:
        """What the capability filters read of a request (part of their cache key)."""
        return (self.cpu, self.memory, self.accelerator, self.accelerator_count)


@dataclasses.dataclass(frozen=True, slots=True)
class Snapshot:
    """PNodes at one moment, with indexes placement needs, built once per reconcile pass.

    `nodes` is sorted by name so that the same set of PNodes gives the same snapshot (and
    so the same placements for a seed) whatever order the store listed them in.
    """

    nodes: tuple[NodeView, ...]
    by_name: Mapping[str, int] = dataclasses.field(init=False, repr=False, compare=False)
    #: Node positions by trust, highest first: the trusted nodes are always a prefix.
    by_trust: tuple[int, ...] = dataclasses.field(init=False, repr=False, compare=False)
    _negated_trust: tuple[float, ...] = dataclasses.field(init=False, repr=False, compare=False)
    #: Node positions holding each dataset, for data-locality candidates.
    holders: Mapping[str, tuple[int, ...]] = dataclasses.field(
        init=False, repr=False, compare=False
    )

    def __init__(self, nodes: Iterable[NodeView]) -> None:
        ordered = tuple(sorted(nodes, key=lambda node: node.name))
        by_name: dict[str, int] = {}
        holders: dict[str, list[int]] = {}
        for position, node in enumerate(ordered):
            if node.name in by_name:
                raise ValueError(f"snapshot: pnode {node.name!r} appears twice; names are unique")
            by_name[node.name] = position
            for dataset in node.datasets:
                holders.setdefault(dataset, []).append(position)
        by_trust = tuple(sorted(range(len(ordered)), key=lambda i: (-ordered[i].trust, i)))
        object.__setattr__(self, "nodes", ordered)
        object.__setattr__(self, "by_name", by_name)
        object.__setattr__(self, "by_trust", by_trust)
        object.__setattr__(self, "_negated_trust", tuple(-ordered[i].trust for i in by_trust))
        object.__setattr__(self, "holders", {k: tuple(v) for k, v in holders.items()})

    def __len__(self) -> int:
        return len(self.nodes)

    def replaced(self, changed: Mapping[int, NodeView]) -> Snapshot:
        """This snapshot with the nodes at some positions replaced by views of the same
        PNodes: the name order and, when no trust and no dataset changed, every index is
        reused, so the result equals `Snapshot(...)` of the same views in O(len + changes)
        instead of two sorts of every PNode (issue 13: at 100,000 PNodes those sorts were a
        quarter of a 1,000-VNode pass)."""
        nodes = list(self.nodes)
        indexes_hold = True
        for position, view in changed.items():
            old = nodes[position]
            if view.name != old.name:
                raise ValueError(
                    f"snapshot: position {position} holds pnode {old.name!r}, not {view.name!r}"
                )
            if view.trust != old.trust or view.datasets != old.datasets:
                indexes_hold = False
            nodes[position] = view
        if not indexes_hold:
            return Snapshot(nodes)
        out = object.__new__(Snapshot)
        object.__setattr__(out, "nodes", tuple(nodes))
        for field in ("by_name", "by_trust", "_negated_trust", "holders"):
            object.__setattr__(out, field, getattr(self, field))
        return out

    def node(self, name: str) -> NodeView | None:
        position = self.by_name.get(name)
        return None if position is None else self.nodes[position]

    def trusted_count(self, floor: float) -> int:
        """How many nodes have trust >= floor (they are `by_trust[:count]`)."""
        return bisect.bisect_right(self._negated_trust, -floor)


def node_view(pnode: pnode_model.PNode) -> NodeView:
    spec, status = pnode.spec, pnode.status
    capacity, allocated = (amounts_mod.of_capacity(c) for c in (spec.capacity, status.allocated))
    return NodeView(
        name=pnode.metadata.name,
        ready=status.phase == "Ready",
        schedulable=not spec.unschedulable,
        draining=spec.draining,
        bugged=status.trust.bugged,
        cpu_capacity=capacity.cpu,
        memory_capacity=capacity.memory,
        accelerators=capacity.accelerators,
        cpu_allocated=allocated.cpu,
        memory_allocated=allocated.memory,
        accelerators_allocated=allocated.accelerators,
        trust=trust_score(
            status.trust.consecutive_valid, status.trust.strikes, bugged=status.trust.bugged
        ),
        missed_heartbeats=status.missed_heartbeats,
        evictions=status.evictions,
        datasets=frozenset(spec.datasets),
        labels=tuple(sorted(pnode.metadata.labels.items())),
        operators=operator_hints(spec.address, pnode.metadata.labels),
    )


#: Labels naming who runs a PNode, or where: PNodes sharing a value may be one operator.
OPERATOR_LABELS = ("dcnr.io/operator", "topology.kubernetes.io/zone")


def operator_hints(address: str, labels: Mapping[str, str]) -> frozenset[str]:
    """What may tie PNodes to one operator: the values of `OPERATOR_LABELS` it carries, and
    the network its data-plane address is in (an IPv4 /24 or an IPv6 /48; a host name is
    taken as is). Loopback addresses give no hint: every PNode of a test shares them."""
    hints = {f"label:{key}={labels[key]}" for key in OPERATOR_LABELS if labels.get(key)}
    host = _host(address)
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        if host and host != "localhost":
            hints.add(f"host:{host.lower()}")
        return frozenset(hints)
    if ip.is_loopback or ip.is_unspecified:
        return frozenset(hints)
    prefix = 24 if ip.version == 4 else 48
    hints.add(f"net:{ipaddress.ip_network((ip, prefix), strict=False)}")  # no re-parse
    return frozenset(hints)


def _host(address: str) -> str:
    """The host of "host:port", "[v6]:port", or a bare host."""
    if address.startswith("[") and "]" in address:
        return address[1 : address.index("]")]
    if address.count(":") == 1:
        return address.split(":")[0]
    return address


class ViewCache:
    """Each PNode's `NodeView`, kept while its record's resource_version stays the same;
    and the snapshot of those views, kept up to date from the PNodes that changed.

    A network pass plans against every PNode; converting 10,000 records each pass cost more
    than placing a thousand VNodes (issue 13). A record with the same resource_version is
    the same record (every write bumps it; the uid tells a re-created PNode from the one
    it replaced), so its view is reused: a pass converts only the PNodes written since the
    last one, typically those the previous pass charged.

    Told which PNodes changed (`views(..., changed=...)`: the informer's change
    notifications), a pass looks at those alone, and `snapshot` patches only their
    positions: a pass costs O(changes), not O(PNodes) (at 100,000 PNodes the two walks over
    every PNode were a third of a 1,000-VNode pass). Not told (`changed=None`: the first
    pass, or a loop without notifications), it walks every record, skipping the very same
    objects by identity. Either way a count that does not add up means a change it was not
    told of, and it walks every record.

    Views and snapshots are immutable; a pass charges its own overlay (`snapshot(overlay)`)
    and placement its own working copy, never these. Pure: no I/O; a plain memo owned by
    one loop: its workers call `views` and `snapshot` without awaiting between them.
    """

    __slots__ = ("_extra", "_membership", "_records", "_snapshot", "_touched", "_views")

    def __init__(self) -> None:
        #: name -> the record last seen, and its view.
        self._records: dict[str, pnode_model.PNode] = {}
        self._views: dict[str, NodeView] = {}
        #: The snapshot of `_views` as of the last `snapshot` (no overlay).
        self._snapshot: Snapshot | None = None
        #: Views replaced since that snapshot; and whether PNodes came or went.
        self._touched: set[str] = set()
        self._membership = True
        #: Names known only from the last call's `extra` (looked at again next time).
        self._extra: set[str] = set()

    def __len__(self) -> int:
        return len(self._views)

    def views(
        self,
        pnodes: Mapping[str, pnode_model.PNode],
        *,
        changed: Iterable[str] | None = None,
        extra: Mapping[str, pnode_model.PNode] | None = None,
    ) -> Mapping[str, NodeView]:
        """name -> view of every PNode in `pnodes` and in `extra` (PNodes read from the store
        that `pnodes`, the informer's, has not brought yet; `pnodes` wins where both have
        one); forgets PNodes in neither.

        `changed`: every name whose record in `pnodes` may differ from the last call's (None:
        unknown, look at them all). Returns this cache's own mapping: read it, never write
        it; it changes at the next call."""
        extra = extra or {}
        records = self._records
        if changed is None:
            seen = records.get
            names: Iterable[str] = [n for n, r in pnodes.items() if seen(n) is not r]
        else:
            names = set(changed)
        outside = {name for name in extra if name not in pnodes}
        for name in (*names, *self._extra, *outside):
            record = pnodes.get(name)
            if record is None:
                record = extra.get(name)
            self._look(name, record)
        self._extra = outside
        expected = len(pnodes) + len(outside)
        if len(records) != expected:
            if changed is not None:  # a change nobody told of: look at everything
                return self.views(pnodes, extra=extra)
            for name in records.keys() - pnodes.keys() - outside:
                self._look(name, None)
        return self._views

    def _look(self, name: str, record: pnode_model.PNode | None) -> None:
        records, views = self._records, self._views
        old = records.get(name)
        if old is record:
            return
        if record is None:
            del records[name], views[name]
            self._membership = True
            return
        if old is None:
            self._membership = True
        if old is None or not _same_record(old, record):
            views[name] = node_view(record)
            self._touched.add(name)
        records[name] = record

    def snapshot(self, overlay: Mapping[str, NodeView] | None = None) -> Snapshot:
        """`Snapshot` of this cache's views with `overlay`'s views in place of theirs (a
        pass's charges: the same PNodes, other amounts), derived from the last one built:
        only the positions of views replaced since are patched (`Snapshot.replaced`), unless
        PNodes came or went."""
        views = self._views
        base = self._snapshot
        if base is None or self._membership:
            base = Snapshot(views.values())
        elif self._touched:
            positions, nodes = base.by_name, base.nodes
            patched: dict[int, NodeView] = {}
            for name in self._touched:
                position = positions[name]
                if views[name] is not nodes[position]:
                    patched[position] = views[name]
            if patched:
                base = base.replaced(patched)
        self._snapshot, self._touched, self._membership = base, set(), False
        if not overlay:
            return base
        positions = base.by_name
        if any(name not in positions for name in overlay):
            return Snapshot({**views, **overlay}.values())
        return base.replaced({positions[name]: view for name, view in overlay.items()})


def _same_record(seen: pnode_model.PNode, record: pnode_model.PNode) -> bool:
    """The same stored version of one PNode (every write bumps resource_version; the uid
    tells a re-created PNode from the one it replaced). Version 0 was never stored, so two
    such records are never taken for the same."""
    version = record.metadata.resource_version
    return bool(version) and (
        seen.metadata.resource_version == version and seen.metadata.uid == record.metadata.uid
    )


def snapshot_of(pnodes: Iterable[pnode_model.PNode]) -> Snapshot:
    return Snapshot(node_view(pnode) for pnode in pnodes)


def request_for(
    network: network_model.Network,
    vnode: network_model.VNodeSpec,
    replica: int,
    *,
    avoid: Iterable[str] = (),
    near: Iterable[str] = (),
    neighbours: Iterable[str] = (),
) -> Request:
    resources = vnode.resources
    accelerator = resources.accelerator
    return Request(
        network=network.metadata.name,
        vnode=vnode.name,
        replica=replica,
        cpu=resources.cpu,
        memory=resources.memory,
        accelerator=None if accelerator is None else accelerator.type,
        accelerator_count=0 if accelerator is None else accelerator.count,
        critical=vnode.critical,
        dataset=None if vnode.data is None else vnode.data.dataset,
        avoid=frozenset(avoid),
        near=frozenset(near),
        neighbours=frozenset(neighbours),
    )


def pnodes_hosting(
    allocations: Iterable[allocation_model.Allocation],
    *,
    network: str,
    vnodes: Iterable[str],
    except_slot: str | None = None,
) -> frozenset[str]:
    """PNodes holding an allocation of any of `vnodes` in `network` (for avoid / near).

    `except_slot` leaves out the slot being placed: its own old allocation (a replica being
    re-placed) is not "another replica", so it must not count towards anti-affinity.
    """
    wanted = set(vnodes)
    return frozenset(
        a.spec.pnode
        for a in allocations
        if a.spec.network == network and a.spec.vnode in wanted and a.metadata.name != except_slot
    )
