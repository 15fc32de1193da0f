"""Event routing: which record changes wake which loop, as a table of rules.

Events only produce keys (controller-runtime): a loop re-reads everything it needs, so an
event is only a hint that something the loop reads may have changed. A hint about a field
the loop does not read costs a whole pass for nothing, and a hint about the loop's own
write is an echo: the network loop writes a placement's allocation and the PNodes'
capacity accounting, and used to be woken by each of them, for every network on those
PNodes. So each rule below names the fields of one kind that the woken loop reads; a change
of any of them (or the record's creation, deletion or re-creation) wakes it, and nothing
else does.

    rule                   kind        fields                               wakes
    network-spec           Network     spec, uid, generation, deletion,     network: itself
                                       finalizers
    network-tiebreakers    Network     status.tiebreakers, .tiebreak_gen.   network: itself
    allocation-placement   Allocation  spec, uid, deletion                  network: its network
    allocation-held        Allocation  spec.pnode, uid                      pnode: its PNode(s)
    pnode-lifecycle        PNode       spec, phase, phase_since,            pnode: itself
                                       incarnation, conditions
    pnode-placement        PNode       spec, labels, phase, incarnation,    network: those on it
                                       trust.bugged
    pnode-gained-room      PNode       joined, Ready again, uncordoned,     network: not Ready
                                       capacity changed, new incarnation

Not routed, on purpose:

- the rest of a Network's status (phase, conditions, counts, slot_epochs, observed
  generation) is the network loop's own output; the driver's and ValidationService's
  tiebreaker requests are routed, since the loop places tiebreakers;
- an Allocation's status (what a heartbeat reports of the VNode) is read by no loop;
- a PNode's capacity accounting (`status.allocated`, `status.assignments_version`) is
  written by the network loop with each placement; other networks wait for room on their
  `unschedulable_retry` timer, as before;
- PNodeLease renewals wake nothing: liveness is judged when asked (the view), and the
  lifecycle loop requeues itself for the moment the lease it read would expire.

The router is pure: `keys_for_change(old, new, lookup)`, where `lookup` answers the two
questions that need the cache (which networks are on a PNode, which are not Ready); the
server passes the view's. Waiters on the view's signals are not routed here: they re-read
on any change of what they watch.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable

from api.resources import allocation, meta, network, pnode

#: (loop name, key): what the manager enqueues.
Key = tuple[str, str]
Record = meta.Resource | None


@dataclasses.dataclass(frozen=True, slots=True)
class Lookup:
    """What routing needs from the cache, as of the change."""

    networks_on: Callable[[str], Iterable[str]]
    networks_not_ready: Callable[[], Iterable[str]]


@dataclasses.dataclass(frozen=True, slots=True)
class Rule:
    name: str
    kind: type[meta.Resource]
    #: The loop it wakes.
    loop: str
    #: Dotted paths into the record; None: `fires` decides instead.
    fields: tuple[str, ...] | None
    #: The keys it wakes, given the change (either side may be None) and the lookup.
    targets: Callable[[Record, Record, Lookup], Iterable[str]]
    reason: str
    fires: Callable[[Record, Record], bool] | None = None


def field(record: meta.Resource, path: str) -> object:
    value: object = record
    for part in path.split("."):
        value = getattr(value, part)
    return value


def changed(old: Record, new: Record, fields: Iterable[str]) -> bool:
    """Whether any of `fields` differs; creation, deletion and re-creation always count."""
    if old is None or new is None or old.metadata.uid != new.metadata.uid:
        return True
    return any(field(old, path) != field(new, path) for path in fields)


def gained_room(old: Record, new: Record) -> bool:
    """A PNode joined, came back Ready, was uncordoned, changed capacity or re-registered."""
    if not isinstance(new, pnode.PNode):
        return False
    if not isinstance(old, pnode.PNode):
        return True
    return (
        (old.status.phase != "Ready" and new.status.phase == "Ready")
        or (old.spec.unschedulable and not new.spec.unschedulable)
        or old.spec.capacity != new.spec.capacity
        or old.status.incarnation != new.status.incarnation
    )


def _either(old: Record, new: Record) -> meta.Resource:
    record = new if new is not None else old
    assert record is not None
    return record


def _itself(old: Record, new: Record, lookup: Lookup) -> list[str]:
    return [_either(old, new).name]


def _allocation_field(name: str) -> Callable[[Record, Record, Lookup], list[str]]:
    """`spec.<name>` of the allocation before and after (a migration names two PNodes)."""

    def targets(old: Record, new: Record, lookup: Lookup) -> list[str]:
        found = {
            str(getattr(rec.spec, name))
            for rec in (old, new)
            if isinstance(rec, allocation.Allocation)
        }
        return sorted(found)

    return targets


def _networks_on(old: Record, new: Record, lookup: Lookup) -> list[str]:
    return sorted(lookup.networks_on(_either(old, new).name))


def _networks_not_ready(old: Record, new: Record, lookup: Lookup) -> list[str]:
    return sorted(lookup.networks_not_ready())


RULES: tuple[Rule, ...] = (
    Rule(
        "network-spec",
        network.Network,
        "network",
        (
            "spec",
            "metadata.generation",
            "metadata.deletion_timestamp",
            "metadata.finalizers",
        ),
        _itself,
        "what the plan is computed from (and deletion, and others' finalizers it waits on)",
    ),
    Rule(
        "network-tiebreakers",
        network.Network,
        "network",
        ("status.tiebreakers", "status.tiebreak_generation"),
        _itself,
        "tiebreakers are requested by the driver and ValidationService; the loop places them",
    ),
    Rule(
        "allocation-placement",
        allocation.Allocation,
        "network",
        ("spec", "metadata.deletion_timestamp"),
        _allocation_field("network"),
        "a slot placed, moved, re-issued or stopped by anyone: the plan reads slots' specs",
    ),
    Rule(
        "allocation-held",
        allocation.Allocation,
        "pnode",
        ("spec.pnode",),
        _allocation_field("pnode"),
        "a Lost or deregistered PNode is deleted once nothing is placed on it",
    ),
    Rule(
        "pnode-lifecycle",
        pnode.PNode,
        "pnode",
        (
            "spec",
            "status.phase",
            "status.phase_since",
            "status.incarnation",
            "status.conditions",
        ),
        _itself,
        "what the lifecycle transition is computed from (the lease has its own timer)",
    ),
    Rule(
        "pnode-placement",
        pnode.PNode,
        "network",
        (
            "spec",
            "metadata.labels",
            "status.phase",
            "status.incarnation",
            "status.trust.bugged",
        ),
        _networks_on,
        "what the plan reads of a PNode hosting the network: lost, re-registered, bugged, "
        "draining, cordoned, resized",
    ),
    Rule(
        "pnode-gained-room",
        pnode.PNode,
        "network",
        None,
        _networks_not_ready,
        "a PNode joined, came back, was uncordoned or resized: retry what could not be placed",
        fires=gained_room,
    ),
)


def fired(old: Record, new: Record) -> list[Rule]:
    """The rules a change fires, in table order."""
    kind = type(_either(old, new))
    found = []
    for rule in RULES:
        if rule.kind is not kind:
            continue
        if rule.fires is not None:
            if rule.fires(old, new):
                found.append(rule)
        elif changed(old, new, rule.fields or ()):
            found.append(rule)
    return found


def keys_for_change(old: Record, new: Record, lookup: Lookup) -> list[Key]:
    """The loop keys a record change concerns, each once, in table order."""
    if old is None and new is None:
        return []
    keys: dict[Key, None] = {}
    for rule in fired(old, new):
        for name in rule.targets(old, new, lookup):
            keys[(rule.loop, name)] = None
    return list(keys)
