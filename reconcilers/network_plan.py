"""The network loop's pure half: from a Network, its Allocations and the PNodes, a plan.

Every existing allocation is sorted by the ordered rule table below; the first rule that
matches decides (Nomad's reconciler shape). Slots with no allocation are placed.

    rule                  when                                   action   if no pnode fits
    --------------------  -------------------------------------  -------  ----------------
    network-deleting      network has a deletion timestamp       stop     -
    vnode-removed         the vnode is no longer in the spec     stop     -
    replica-scaled-down   replica index >= replicas_of(vnode)    stop     -
                          (spec, validation, tiebreaker)
    pnode-gone            the PNode record is missing            migrate  stop
    pnode-lost            PNode phase Lost                       migrate  stop
    pnode-bugged          PNode failed validation (bugged)       migrate  keep
    pnode-draining        PNode draining                         migrate  keep
    pnode-re-registered   allocation's incarnation != PNode's    reissue  stop
    vnode-changed         allocation's vnode_hash != the spec's  reissue  keep
    pnode-not-ready       PNode NotReady (lease expired, grace   keep     -
                          not over: what the grace is for)
    current               anything else                          keep     -

A reissue stays on its PNode with epoch + 1 when the VNode's (possibly new) resources still
fit there; otherwise it migrates. "If no pnode fits" is what becomes of a migration that the
scheduler finds unschedulable: when the old placement is dead (PNode gone, Lost, or its
agent re-registered and dropped it) the allocation is stopped and the slot reported
unschedulable, so no allocation points at a dead node; when it is merely unwelcome
(bugged, draining, a spec change that fits nowhere) it keeps running where it is.

Capacity. Placements and migrations go through one `scheduler.placement.place_all` call on
a snapshot from which stopped allocations are already released and in which re-issues are
already resized. Migrations are *not* released before placing: a migration releases its
old PNode in the same transaction that charges its new one, so a placement relying on that
capacity could be applied before it and over-commit the PNode in between. (Only a
re-registered PNode's capacity is lost to this; Lost, missing, bugged and draining PNodes
take no new work anyway.) Actions are ordered as they must be applied: stops, re-issues,
migrations, placements, so every transaction finds the capacity the plan counted on.

Epochs only grow. A slot stopped while its VNode is still in the spec leaves its epoch in
`status.slot_epochs`, and its next placement continues from there.

Pure: no I/O, no clock (`now` is passed in), randomness only from `seed`.
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Callable, Iterable, Mapping, MutableMapping
from datetime import datetime
from typing import Literal, TypeAlias, cast

from api.resources import allocation as allocation_model
from api.resources import amounts
from api.resources import network as network_model
from api.resources import pnode as pnode_model
from reconcilers import network_actions, network_status, slots
from scheduler import explain, filters, model, placement

Allocation = allocation_model.Allocation
Verdict = Literal["stop", "migrate", "reissue", "keep"]
Fallback = Literal["stop", "keep", "-"]


# -- the rule table ------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class Facts:
    """What the rules look at for one allocation."""

    allocation: Allocation
    network: network_model.Network
    vnode: network_model.VNodeSpec | None
    pnode: pnode_model.PNode | None
    vnode_hash: str | None


@dataclasses.dataclass(frozen=True, slots=True)
class Rule:
    name: str
    applies: Callable[[Facts], bool]
    verdict: Verdict
    reason: str
    #: For migrate and reissue: what happens when no PNode can take the slot.
    if_nowhere: Fallback = "-"


def _deleting(f: Facts) -> bool:
    return f.network.metadata.deletion_timestamp is not None


def _scaled_down(f: Facts) -> bool:
    return f.vnode is not None and f.allocation.spec.replica >= f.network.replicas_of(f.vnode)


def _phase(phase: pnode_model.PNodePhase) -> Callable[[Facts], bool]:
    return lambda f: f.pnode is not None and f.pnode.status.phase == phase


def _re_registered(f: Facts) -> bool:
    return f.pnode is not None and f.pnode.status.incarnation != f.allocation.spec.pnode_incarnation


RULES: tuple[Rule, ...] = (
    Rule("network-deleting", _deleting, "stop", "network is being deleted"),
    Rule("vnode-removed", lambda f: f.vnode is None, "stop", "vnode removed from spec"),
    Rule("replica-scaled-down", _scaled_down, "stop", "replica scaled down"),
    Rule("pnode-gone", lambda f: f.pnode is None, "migrate", "pnode gone", "stop"),
    Rule("pnode-lost", _phase("Lost"), "migrate", "pnode lost", "stop"),
    Rule(
        "pnode-bugged",
        lambda f: f.pnode is not None and f.pnode.status.trust.bugged,
        "migrate",
        "pnode bugged",
        "keep",
    ),
    Rule(
        "pnode-draining",
        lambda f: f.pnode is not None and f.pnode.spec.draining,
        "migrate",
        "pnode draining",
        "keep",
    ),
    Rule("pnode-re-registered", _re_registered, "reissue", "pnode re-registered", "stop"),
    Rule(
        "vnode-changed",
        lambda f: f.vnode_hash != f.allocation.spec.vnode_hash,
        "reissue",
        "vnode spec changed",
        "keep",
    ),
    Rule(
        "pnode-not-ready",
        _phase("NotReady"),
        "keep",
        "pnode not ready; kept through the grace before it is declared lost",
    ),
    Rule("current", lambda f: True, "keep", "placed and current"),
)


def classify(facts: Facts) -> Rule:
    """The first rule of `RULES` that applies (the last one always does)."""
    return next(rule for rule in RULES if rule.applies(facts))


# -- computing the plan --------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class _Moving:
    allocation: Allocation
    rule: Rule


@dataclasses.dataclass(slots=True)
class _Sorted:
    """Existing allocations by verdict, as the plan is worked out."""

    stops: list[network_actions.Stop] = dataclasses.field(default_factory=list)
    keeps: list[network_actions.Keep] = dataclasses.field(default_factory=list)
    reissues: list[network_actions.Reissue] = dataclasses.field(default_factory=list)
    moving: list[_Moving] = dataclasses.field(default_factory=list)
    resizing: list[_Moving] = dataclasses.field(default_factory=list)


Pnodes = Mapping[str, pnode_model.PNode] | Iterable[pnode_model.PNode]
#: A pass's views of the PNodes: its own changes (first map) over the cached views.
Views: TypeAlias = "collections.ChainMap[str, model.NodeView]"


def by_name(pnodes: Pnodes) -> Mapping[str, pnode_model.PNode]:
    """PNodes by name: a mapping (the informer's) as is, a list indexed."""
    if isinstance(pnodes, Mapping):
        return pnodes
    return {p.metadata.name: p for p in pnodes}


def compute_plan(
    network: network_model.Network,
    allocations: list[Allocation],
    pnodes: Pnodes,
    *,
    seed: int,
    config: network_actions.PlanConfig = network_actions.DEFAULT_CONFIG,
    now: datetime,
    views: Mapping[str, model.NodeView] | None = None,
    snapshots: model.ViewCache | None = None,
    derived: slots.Derived | None = None,
) -> network_actions.NetworkPlan:
    """`pnodes` by name or as a list; `views`, if given, must be `model.node_view` of each
    of them (a `model.ViewCache`'s, which spares converting every PNode each pass), and
    `snapshots`, if given, the cache `views` came from (`ViewCache.views`): it keeps this
    pass's snapshot up to date from the PNodes that changed instead of building it.
    `derived`, if given, must be `slots.derive(network)` (a `slots.SpecCache`'s, which
    spares hashing every VNode and walking the graph each pass); one derived from another
    spec (uid or generation) is refused."""
    if derived is None:
        derived = slots.derive(network)
    elif not derived.matches(network):
        raise ValueError(
            f"compute_plan: network {network.metadata.name!r} is uid {network.metadata.uid!r} "
            f"generation {network.metadata.generation}, but `derived` is of uid "
            f"{derived.uid!r} generation {derived.generation}"
        )
    by_pnode = by_name(pnodes)
    specs = {v.name: v for v in network.spec.vnodes}  # network.vnode() is a linear search
    hashes = derived.hashes
    current, found, working = _sorted(network, specs, allocations, by_pnode, hashes, views)
    requests = _requests(network, current, found, derived.neighbours)
    if snapshots is None:
        snapshot = model.Snapshot(working.values())
    else:  # the pass's own charges on top of the cache's views
        snapshot = snapshots.snapshot(working.maps[0])
    decided = placement.place_all(requests, snapshot, seed=seed, config=config.scheduler)
    migrations, places, unschedulable = _decide(network, specs, decided, found, by_pnode, hashes)

    actions: tuple[network_actions.Action, ...] = (
        *found.stops,
        *found.reissues,
        *migrations,
        *places,
        *found.keeps,
    )
    final: dict[str, str | None] = {}
    if network.metadata.deletion_timestamp is None:
        final = {slot: None for slot, _, _ in slots.slots(network)}
    for action in actions:
        slot, pnode = _after(action)
        if slot in final:
            final[slot] = pnode
    remembered = {
        s.allocation.metadata.name: s.allocation.spec.epoch for s in found.stops if s.remember_epoch
    }
    status = network_status.compute(network, final, remembered, by_pnode, unschedulable, now=now)
    return network_actions.NetworkPlan(actions=actions, unschedulable=unschedulable, status=status)


def slot_request(
    network: network_model.Network,
    vnode: network_model.VNodeSpec,
    replica: int,
    *,
    allocations: list[Allocation],
    pnodes: Pnodes,
) -> model.Request:
    """The request `compute_plan` makes to place (or migrate) this slot, from the same
    allocations and PNodes, by the same code: what `dcnctl explain placement` re-derives.
    A slot the plan keeps in place gets the request it would get if it were placed now (its
    own PNode is no sibling to avoid, as for a migration)."""
    by_pnode = by_name(pnodes)
    derived = slots.derive(network)
    specs = {v.name: v for v in network.spec.vnodes}
    current, found, _ = _sorted(network, specs, allocations, by_pnode, derived.hashes)
    slot = allocation_model.slot_name(network.metadata.name, vnode.name, replica)
    own = next((a.spec.pnode for a in current if a.metadata.name == slot), None)
    return _slot_request(network, vnode, replica, _hosting(found), derived.neighbours, own)


def _sorted(
    network: network_model.Network,
    specs: Mapping[str, network_model.VNodeSpec],
    allocations: list[Allocation],
    by_pnode: Mapping[str, pnode_model.PNode],
    hashes: Mapping[str, str],
    cached: Mapping[str, model.NodeView] | None = None,
) -> tuple[list[Allocation], _Sorted, Views]:
    """The network's allocations (by slot), sorted by the rules with re-issues resized, and
    the PNodes as placement will see them (stops released, re-issues resized): this pass's
    changes in the first map, over `cached` (never written) or views converted here."""
    current = sorted(
        (a for a in allocations if a.spec.network == network.metadata.name),
        key=lambda a: a.metadata.name,
    )
    found = _sort(network, specs, current, by_pnode, hashes)
    if cached is None:
        cached = {name: model.node_view(p) for name, p in by_pnode.items()}
    # Not a copy of every view: at 100,000 PNodes that was a walk per pass (issue 13).
    # A ChainMap writes only to its first map, so `cached` is never written.
    views: Views = collections.ChainMap({}, cast("MutableMapping[str, model.NodeView]", cached))
    for stop in found.stops:  # released before anything is placed: applied first
        _adjust(views, stop.allocation.spec.pnode, stop.allocation.spec.resources, -1)
    _resize(network, specs, found, views, by_pnode, hashes)
    return current, found, views


def _sort(
    network: network_model.Network,
    specs: Mapping[str, network_model.VNodeSpec],
    current: list[Allocation],
    by_pnode: Mapping[str, pnode_model.PNode],
    hashes: Mapping[str, str],
) -> _Sorted:
    found = _Sorted()
    for alloc in current:
        spec = alloc.spec
        vnode = specs.get(spec.vnode)
        facts = Facts(alloc, network, vnode, by_pnode.get(spec.pnode), hashes.get(spec.vnode))
        rule = classify(facts)
        if rule.verdict == "stop":
            remember = rule.name == "replica-scaled-down"
            found.stops.append(network_actions.Stop(alloc, rule.reason, remember_epoch=remember))
        elif rule.verdict == "keep":
            found.keeps.append(network_actions.Keep(alloc, rule.reason))
        elif rule.verdict == "migrate":
            found.moving.append(_Moving(alloc, rule))
        else:
            found.resizing.append(_Moving(alloc, rule))
    return found


def _resize(
    network: network_model.Network,
    specs: Mapping[str, network_model.VNodeSpec],
    found: _Sorted,
    views: Views,
    by_pnode: Mapping[str, pnode_model.PNode],
    hashes: Mapping[str, str],
) -> None:
    """Re-issue in place what still fits there (in slot order, the order they are applied
    in, so a growth may use what an earlier shrink freed); the rest has to migrate."""
    for item in found.resizing:
        alloc, vnode = item.allocation, specs.get(item.allocation.spec.vnode)
        assert vnode is not None  # vnode-removed matched first otherwise
        target = by_pnode[alloc.spec.pnode]  # pnode-gone matched first otherwise
        if not _fits_in_place(views, alloc, vnode.resources):
            found.moving.append(item)
            continue
        _adjust(views, alloc.spec.pnode, alloc.spec.resources, -1)
        _adjust(views, alloc.spec.pnode, vnode.resources, +1)
        found.reissues.append(
            network_actions.Reissue(
                alloc,
                alloc.spec.epoch + 1,
                item.rule.reason,
                target.status.incarnation,
                hashes[vnode.name],
                vnode.resources,
            )
        )


def _requests(
    network: network_model.Network,
    current: list[Allocation],
    found: _Sorted,
    near_of: Mapping[str, tuple[str, ...]],
) -> list[model.Request]:
    """A request per slot to place or migrate, avoiding its siblings' PNodes and near its
    graph neighbours' (as far as they are known before placing: kept and re-issued
    replicas, and unwelcome ones that may have to stay put)."""
    if network.metadata.deletion_timestamp is not None:
        return []
    hosting = _hosting(found)
    occupied = {a.metadata.name for a in current}
    migrating = {m.allocation.metadata.name: m.allocation.spec.pnode for m in found.moving}
    requests = []
    for slot, vnode, replica in slots.slots(network):
        if slot in occupied and slot not in migrating:
            continue
        own = migrating.get(slot)
        requests.append(_slot_request(network, vnode, replica, hosting, near_of, own))
    return requests


def _hosting(found: _Sorted) -> dict[str, set[str]]:
    """VNode -> the PNodes its replicas stay on, as far as is known before placing: kept
    and re-issued replicas, and unwelcome ones that may have to stay put."""
    hosting: dict[str, set[str]] = {}
    staying = [k.allocation for k in found.keeps] + [r.allocation for r in found.reissues]
    staying += [m.allocation for m in found.moving if m.rule.if_nowhere == "keep"]
    for alloc in staying:
        hosting.setdefault(alloc.spec.vnode, set()).add(alloc.spec.pnode)
    return hosting


def _slot_request(
    network: network_model.Network,
    vnode: network_model.VNodeSpec,
    replica: int,
    hosting: dict[str, set[str]],
    near_of: Mapping[str, tuple[str, ...]],
    own: str | None,
) -> model.Request:
    """Avoiding its siblings' PNodes (`own`, the slot's current PNode, is itself: no
    sibling) and near its graph neighbours'."""
    near: set[str] = set()
    for neighbour in near_of.get(vnode.name, ()):
        near |= hosting.get(neighbour, set())
    avoid = hosting.get(vnode.name, set()) - {own or ""}
    return model.request_for(
        network, vnode, replica, avoid=avoid, near=near, neighbours=near_of.get(vnode.name, ())
    )


def _decide(
    network: network_model.Network,
    specs: Mapping[str, network_model.VNodeSpec],
    decided: placement.Plan,
    found: _Sorted,
    by_pnode: Mapping[str, pnode_model.PNode],
    hashes: Mapping[str, str],
) -> tuple[
    list[network_actions.Migrate],
    list[network_actions.Place],
    dict[str, explain.Unschedulable],
]:
    """Turn the scheduler's decisions into actions; unplaceable migrations stop or stay."""
    migrating = {m.allocation.metadata.name: m for m in found.moving}
    migrations: list[network_actions.Migrate] = []
    places: list[network_actions.Place] = []
    unschedulable: dict[str, explain.Unschedulable] = {}
    for entry in decided.entries:
        request, decision = entry.request, entry.decision
        slot, vnode = request.key, specs.get(request.vnode)
        assert vnode is not None
        item = migrating.get(slot)
        if isinstance(decision, explain.Unschedulable):
            unschedulable[slot] = decision
            if item is None:
                continue
            if item.rule.if_nowhere == "stop":
                why = f"{item.rule.reason}; no pnode can take it"
                found.stops.append(network_actions.Stop(item.allocation, why, remember_epoch=True))
            else:
                why = f"{item.rule.reason}; kept in place until a pnode can take it"
                found.keeps.append(network_actions.Keep(item.allocation, why))
            continue
        incarnation = by_pnode[decision.pnode].status.incarnation
        if item is not None:
            alloc = item.allocation
            migrations.append(
                network_actions.Migrate(
                    alloc,
                    decision.pnode,
                    alloc.spec.epoch + 1,
                    item.rule.reason,
                    incarnation,
                    hashes[vnode.name],
                    vnode.resources,
                )
            )
            continue
        places.append(
            network_actions.Place(
                network=network.metadata.name,
                slot=slot,
                vnode=vnode.name,
                replica=request.replica,
                pnode=decision.pnode,
                epoch=network.status.slot_epochs.get(slot, 0) + 1,
                pnode_incarnation=incarnation,
                vnode_hash=hashes[vnode.name],
                resources=vnode.resources,
            )
        )
    return migrations, places, unschedulable


def _after(action: network_actions.Action) -> tuple[str, str | None]:
    """The slot an action is about, and its PNode once the action is applied."""
    if isinstance(action, network_actions.Place):
        return action.slot, action.pnode
    if isinstance(action, network_actions.Migrate):
        return action.allocation.metadata.name, action.to_pnode
    if isinstance(action, network_actions.Stop):
        return action.allocation.metadata.name, None
    return action.allocation.metadata.name, action.allocation.spec.pnode


def _fits_in_place(
    views: Views, alloc: Allocation, resources: network_model.ResourceRequest
) -> bool:
    """Whether `resources` fit on the allocation's PNode once its current charge is released."""
    node = views.get(alloc.spec.pnode)
    if node is None:
        return False
    released = node.charged(amounts.of_request(alloc.spec.resources), -1)
    request = _request(resources)
    checks = (filters.cpu_fits, filters.memory_fits, filters.accelerator_fits)
    return all(check(request, released) is None for check in checks)


def _request(resources: network_model.ResourceRequest) -> model.Request:
    accelerator = resources.accelerator
    return model.Request(
        network="",
        vnode="",
        cpu=resources.cpu,
        memory=resources.memory,
        accelerator=None if accelerator is None else accelerator.type,
        accelerator_count=0 if accelerator is None else accelerator.count,
    )


def _adjust(
    views: Views,
    pnode: str,
    resources: network_model.ResourceRequest,
    sign: int,
) -> None:
    node = views.get(pnode)
    if node is not None:
        views[pnode] = node.charged(amounts.of_request(resources), sign)
