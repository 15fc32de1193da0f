"""Event routing: each rule of the table with a case, the changes that must wake nothing,
and a check that every rule has a case (a rule added without one fails here)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TypeVar

import pytest

from api.resources import allocation, lease, meta, pnode
from api.resources import network as net_model
from controller.runtime import events
from tests.controller.state import test_view as records

NOW = datetime(2030, 1, 1, tzinfo=UTC)
R = TypeVar("R", bound=meta.Resource)

#: p1 hosts "mnist"; "pending" is not Ready anywhere.
LOOKUP = events.Lookup(
    networks_on=lambda name: {"mnist"} if name == "p1" else set(),
    networks_not_ready=lambda: {"pending"},
)


def _stored(record: R) -> R:
    """As the store returns it: with a uid and a resource_version."""
    record = record.model_copy(deep=True)
    record.metadata.uid = f"uid-{record.name}"
    record.metadata.resource_version = 1
    record.metadata.generation = 1
    return record


def _net() -> net_model.Network:
    net = _stored(records.network_record("mnist"))
    net.status.phase = "Ready"
    return net


def _node() -> pnode.PNode:
    return _stored(records.pnode_record("p1"))


def _alloc() -> allocation.Allocation:
    return _stored(records.allocation_record("mnist", "input", 0, "p1"))


def _lease() -> lease.PNodeLease:
    return _stored(records.lease_record("p1", renewed=NOW))


def _written(record: R, change: Callable[[R], None]) -> tuple[R, R]:
    """(old, new): `record` and its next version with `change` applied."""
    new = record.model_copy(deep=True)
    change(new)
    new.metadata.resource_version += 1
    return record, new


@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    old: meta.Resource | None
    new: meta.Resource | None
    #: Rules that fire, and the keys the change wakes.
    rules: tuple[str, ...]
    keys: tuple[events.Key, ...]


def _spec_edit(n: net_model.Network) -> None:
    n.spec.vnodes[0].params = {"units": 7}
    n.metadata.generation += 1


def _tiebreak(n: net_model.Network) -> None:
    n.status.tiebreakers = ["input"]
    n.status.tiebreak_generation += 1


def _own_status(n: net_model.Network) -> None:
    """What the network loop writes of its own network."""
    n.status.phase = "Degraded"
    n.status.observed_generation = 1
    n.status.ready_slots = 1
    n.status.desired_slots = 2
    n.status.slot_epochs = {"mnist.input.0": 3}
    n.status.conditions = [meta.Condition(type="Ready", status="False", reason="Degraded")]


def _deleting(n: meta.Resource) -> None:
    n.metadata.deletion_timestamp = NOW


def _finalizers(n: net_model.Network) -> None:
    n.metadata.finalizers = []


def _migrated(a: allocation.Allocation) -> None:
    a.spec.pnode, a.spec.epoch = "p2", 2


def _reissued(a: allocation.Allocation) -> None:
    a.spec.epoch = 2


def _reported(a: allocation.Allocation) -> None:
    a.status.phase = "Running"
    a.status.message = "serving"


def _accounted(p: pnode.PNode) -> None:
    """What a placement writes to a PNode: capacity accounting."""
    p.status.allocated.cpu += 100
    p.status.allocated.memory += 64 * 2**20
    p.status.assignments_version += 1


def _not_ready(p: pnode.PNode) -> None:
    p.status.phase = "NotReady"
    p.status.phase_since = NOW


def _ready_again(p: pnode.PNode) -> None:
    p.status.phase = "Ready"
    p.status.phase_since = NOW


def _cordoned(p: pnode.PNode) -> None:
    p.spec.unschedulable = True


def _uncordoned(p: pnode.PNode) -> None:
    p.spec.unschedulable = False


def _resized(p: pnode.PNode) -> None:
    p.spec.capacity = pnode.Capacity(cpu="8", memory=16 * 2**30)


def _re_registered(p: pnode.PNode) -> None:
    p.status.incarnation += 1


def _bugged(p: pnode.PNode) -> None:
    p.status.trust.bugged = True


def _struck(p: pnode.PNode) -> None:
    p.status.trust.strikes += 1


def _relabelled(p: pnode.PNode) -> None:
    p.metadata.labels = {"zone": "z2"}


def _deregistered(p: pnode.PNode) -> None:
    p.status.conditions = [meta.Condition(type="Deregistered", status="True")]


def _renewed(item: lease.PNodeLease) -> None:
    item.spec.renew_time = NOW.replace(second=3)


def _cordoned_node() -> pnode.PNode:
    node = _node()
    node.spec.unschedulable = True
    return node


def _not_ready_node() -> pnode.PNode:
    node = _node()
    node.status.phase = "NotReady"
    return node


NETWORK = ("network", "mnist")
PENDING = ("network", "pending")
PNODE = ("pnode", "p1")
ON_P1 = ("pnode-lifecycle", "pnode-placement")

CASES = [
    # -- Network
    Case("network created", None, _net(), ("network-spec", "network-tiebreakers"), (NETWORK,)),
    Case("network spec edited", *_written(_net(), _spec_edit), ("network-spec",), (NETWORK,)),
    Case("network being deleted", *_written(_net(), _deleting), ("network-spec",), (NETWORK,)),
    Case("a finalizer removed", *_written(_net(), _finalizers), ("network-spec",), (NETWORK,)),
    Case("network gone", _net(), None, ("network-spec", "network-tiebreakers"), (NETWORK,)),
    Case(
        "tiebreaker requested", *_written(_net(), _tiebreak), ("network-tiebreakers",), (NETWORK,)
    ),
    Case("the loop's own status write", *_written(_net(), _own_status), (), ()),
    Case("labels only", *_written(_net(), lambda n: n.metadata.labels.update(a="b")), (), ()),
    # -- Allocation
    Case(
        "allocation placed",
        None,
        _alloc(),
        ("allocation-placement", "allocation-held"),
        (NETWORK, PNODE),
    ),
    Case(
        "allocation migrated",
        *_written(_alloc(), _migrated),
        ("allocation-placement", "allocation-held"),
        (NETWORK, PNODE, ("pnode", "p2")),
    ),
    Case(
        "allocation re-issued",
        *_written(_alloc(), _reissued),
        ("allocation-placement",),
        (NETWORK,),
    ),
    Case(
        "allocation stopped",
        _alloc(),
        None,
        ("allocation-placement", "allocation-held"),
        (NETWORK, PNODE),
    ),
    Case("allocation status from a heartbeat", *_written(_alloc(), _reported), (), ()),
    # -- PNode
    Case("pnode joined", None, _node(), (*ON_P1, "pnode-gained-room"), (PNODE, NETWORK, PENDING)),
    Case("pnode deleted", _node(), None, ON_P1, (PNODE, NETWORK)),
    Case("capacity accounting", *_written(_node(), _accounted), (), ()),
    Case("pnode NotReady", *_written(_node(), _not_ready), ON_P1, (PNODE, NETWORK)),
    Case(
        "pnode Ready again",
        *_written(_not_ready_node(), _ready_again),
        (*ON_P1, "pnode-gained-room"),
        (PNODE, NETWORK, PENDING),
    ),
    Case("pnode cordoned", *_written(_node(), _cordoned), ON_P1, (PNODE, NETWORK)),
    Case(
        "pnode uncordoned",
        *_written(_cordoned_node(), _uncordoned),
        (*ON_P1, "pnode-gained-room"),
        (PNODE, NETWORK, PENDING),
    ),
    Case(
        "pnode resized",
        *_written(_node(), _resized),
        (*ON_P1, "pnode-gained-room"),
        (PNODE, NETWORK, PENDING),
    ),
    Case(
        "pnode re-registered",
        *_written(_node(), _re_registered),
        (*ON_P1, "pnode-gained-room"),
        (PNODE, NETWORK, PENDING),
    ),
    Case("pnode bugged", *_written(_node(), _bugged), ("pnode-placement",), (NETWORK,)),
    Case("pnode relabelled", *_written(_node(), _relabelled), ("pnode-placement",), (NETWORK,)),
    Case("pnode deregistered", *_written(_node(), _deregistered), ("pnode-lifecycle",), (PNODE,)),
    Case("a strike short of bugged", *_written(_node(), _struck), (), ()),
    # -- PNodeLease
    Case("lease renewed", *_written(_lease(), _renewed), (), ()),
    Case("lease created", None, _lease(), (), ()),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_each_change_fires_its_rules_and_wakes_their_keys(case: Case) -> None:
    assert tuple(r.name for r in events.fired(case.old, case.new)) == case.rules
    assert tuple(events.keys_for_change(case.old, case.new, LOOKUP)) == case.keys


def test_every_rule_has_a_case() -> None:
    covered = {name for case in CASES for name in case.rules}
    missing = [rule.name for rule in events.RULES if rule.name not in covered]
    assert not missing, f"rules without a case: {missing}"


def test_rule_names_are_unique_and_each_gives_a_reason() -> None:
    names = [rule.name for rule in events.RULES]
    assert len(names) == len(set(names))
    assert all(rule.reason for rule in events.RULES)
    assert all((rule.fields is None) != (rule.fires is None) for rule in events.RULES)


def test_a_re_created_record_counts_as_changed_whatever_its_fields() -> None:
    old = _net()
    new = old.model_copy(deep=True)
    new.metadata.uid = "another"
    assert events.keys_for_change(old, new, LOOKUP) == [NETWORK]


def test_the_networks_own_status_write_does_not_re_queue_it() -> None:
    old, new = _written(_net(), _own_status)
    assert events.keys_for_change(old, new, LOOKUP) == []


def test_capacity_accounting_does_not_re_queue_the_networks_on_the_pnode() -> None:
    old, new = _written(_node(), _accounted)
    assert events.keys_for_change(old, new, LOOKUP) == []


def test_a_heartbeats_allocation_status_does_not_re_queue_the_network() -> None:
    old, new = _written(_alloc(), _reported)
    assert events.keys_for_change(old, new, LOOKUP) == []
