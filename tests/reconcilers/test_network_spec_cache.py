"""What a plan derives from a Network's spec, kept per generation (`slots.SpecCache`, issue
13): a pass planned with the cached value plans exactly what a pass deriving it afresh
plans, whatever happened to the network in between; a new generation or a re-created
network is derived again; and a value derived from another spec is refused.

The property walks a network through random edits (spec changes with their generation
bumped, re-creations, status-only changes such as tiebreakers), with allocations left from
earlier generations and PNodes in every phase, and compares each pass with the cache
against a pass without it.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from api.resources import allocation, network, pnode
from reconcilers import network_actions, network_plan, slots
from tests.reconcilers import helpers
from tests.reconcilers.helpers import NOW

PROPERTY = settings(max_examples=60, derandomize=True, deadline=None)
NAMES = ("a", "b", "c", "d", "e", "f")
Vnodes = list[dict[str, Any]]


# -- the network's life: edits ---------------------------------------------------------------


@st.composite
def vnode_lists(draw: st.DrawFn) -> Vnodes:
    """A DAG over some of NAMES (inputs only from earlier names), varied in what it runs."""
    chosen = draw(st.lists(st.sampled_from(NAMES), min_size=1, max_size=len(NAMES), unique=True))
    chosen.sort()
    out = []
    for i, name in enumerate(chosen):
        inputs = draw(st.lists(st.sampled_from(chosen[:i]), unique=True)) if i else []
        out.append(
            helpers.vnode(
                name,
                inputs=inputs,
                replicas=draw(st.integers(1, 3)),
                cpu=draw(st.sampled_from(["250m", "500m", "1"])),
                params={"units": draw(st.integers(1, 3))},
            )
        )
    return out


EDITS = ("respec", "retune", "rewire", "tiebreak", "status", "recreate", "nothing")


@st.composite
def edits(draw: st.DrawFn) -> tuple[str, Any]:
    kind = draw(st.sampled_from(EDITS))
    if kind == "respec":
        return kind, draw(vnode_lists())
    if kind in ("retune", "rewire"):
        return kind, (draw(st.integers(0, 99)), draw(st.integers(1, 9)))
    if kind == "tiebreak":
        return kind, draw(st.lists(st.sampled_from(NAMES), unique=True, max_size=2))
    return kind, None


def edited(net: network.Network, edit: tuple[str, Any], uids: list[int]) -> network.Network:
    """`net` after `edit`, as its writers would leave it: a spec change bumps the
    generation (`api.resources.meta`), a re-creation gets a new uid at generation 1."""
    kind, arg = edit
    out = net.model_copy(deep=True)
    vnodes = out.spec.vnodes
    if kind == "respec":
        fresh = helpers.network_record(arg)
        out.spec = fresh.spec
    elif kind == "retune":
        pick, units = arg
        vnodes[pick % len(vnodes)].params = {"units": units}
    elif kind == "rewire":
        pick, _ = arg
        at = pick % len(vnodes)
        earlier = [v.name for v in vnodes[:at]]
        vnodes[at].inputs = [] if vnodes[at].inputs or not earlier else earlier[-1:]
    elif kind == "tiebreak":
        out.status.tiebreakers = list(arg)
        out.status.tiebreak_generation += 1
        return out
    elif kind == "status":
        out.status.phase = "Degraded" if out.status.phase != "Degraded" else "Ready"
        return out
    elif kind == "recreate":
        uids.append(len(uids))
        out.metadata.uid = f"uid-{uids[-1]}"
        out.metadata.generation = 1
        return out
    else:
        return out
    out.metadata.generation += 1
    return out


def pnodes_in_every_phase() -> list[pnode.PNode]:
    return [
        helpers.pnode_record("p1"),
        helpers.pnode_record("p2", phase="Lost"),
        helpers.pnode_record("p3", phase="NotReady"),
        helpers.pnode_record("p4", draining=True),
        helpers.pnode_record("p5", incarnation=2),
        helpers.pnode_record("p6"),
        helpers.pnode_record("p7", cpu="8", memory="16Gi"),
    ]


def left_over(
    old: network.Network, now: network.Network, hosts: list[int]
) -> list[allocation.Allocation]:
    """Allocations as a pass over `old` would have left them (hashes of `old`'s spec),
    read by a pass over `now`: some stale, some of VNodes since removed."""
    found = []
    pnodes = [p.metadata.name for p in pnodes_in_every_phase()] + ["p9"]  # p9: gone
    for i, (slot, vnode, replica) in enumerate(slots.slots(old)):
        if hosts and hosts[i % len(hosts)] == 0:
            continue  # unplaced
        where = pnodes[(hosts[i % len(hosts)] if hosts else i) % len(pnodes)]
        record = helpers.allocation_record(old, vnode.name, replica, where)
        record.spec.network = now.metadata.name
        assert record.metadata.name == slot
        found.append(record)
    return found


def plan(
    net: network.Network,
    allocations: list[allocation.Allocation],
    derived: slots.Derived | None,
) -> network_actions.NetworkPlan:
    return network_plan.compute_plan(
        net,
        allocations,
        pnodes_in_every_phase(),
        seed=slots.seed_for(net),
        now=NOW,
        derived=derived,
    )


# -- the property ------------------------------------------------------------------------------


@PROPERTY
@given(
    first=vnode_lists(),
    steps=st.lists(st.tuples(edits(), st.lists(st.integers(0, 8), max_size=6)), max_size=8),
)
def test_a_cached_pass_plans_exactly_what_an_uncached_pass_plans(
    first: Vnodes, steps: list[tuple[tuple[str, Any], list[int]]]
) -> None:
    cache = slots.SpecCache()
    uids: list[int] = []
    net = helpers.network_record(first)
    previous = net
    for edit, hosts in [(("nothing", None), []), *steps]:
        net = edited(net, edit, uids)
        allocations = left_over(previous, net, hosts)
        derived = cache.derived(net)
        assert derived == slots.derive(net)  # never a stale value, whatever came before
        assert derived.hashes == slots.vnode_hashes(net)
        assert derived.neighbours == net.neighbours()
        assert plan(net, allocations, derived) == plan(net, allocations, None)
        previous = net
    assert len(cache) == 1  # one entry per name, whatever the generations


# -- invalidation ------------------------------------------------------------------------------


def test_the_same_generation_is_derived_once() -> None:
    cache = slots.SpecCache()
    net = helpers.network_record([helpers.vnode("a"), helpers.vnode("b", inputs=["a"])])
    first = cache.derived(net)
    # Another copy of the same record version, or the same spec with another status.
    again = net.model_copy(deep=True)
    again.status.phase = "Ready"
    again.status.tiebreakers = ["a"]
    again.metadata.resource_version += 5
    assert cache.derived(again) is first


def test_a_new_generation_is_derived_again() -> None:
    cache = slots.SpecCache()
    net = helpers.network_record([helpers.vnode("a"), helpers.vnode("b", inputs=["a"])])
    first = cache.derived(net)
    changed = net.model_copy(deep=True)
    changed.spec.vnodes[0].params = {"units": 64}
    changed.metadata.generation += 1
    second = cache.derived(changed)
    assert second is not first
    assert second.hashes["a"] != first.hashes["a"]
    assert second.hashes["b"] == first.hashes["b"]
    assert second.seed != first.seed
    assert second == slots.derive(changed)
    assert len(cache) == 1


def test_a_recreated_network_is_derived_again() -> None:
    cache = slots.SpecCache()
    net = helpers.network_record([helpers.vnode("a")])
    first = cache.derived(net)
    recreated = helpers.network_record([helpers.vnode("a", cpu="1")])
    recreated.metadata.uid = "uid-net-again"  # same name and generation, another life
    second = cache.derived(recreated)
    assert second.uid == "uid-net-again"
    assert second.hashes != first.hashes
    assert cache.derived(recreated) is second


def test_forget_drops_only_that_network() -> None:
    cache = slots.SpecCache()
    nets = [helpers.network_record([helpers.vnode("a")], name=n) for n in ("x", "y")]
    held = [cache.derived(net) for net in nets]
    cache.forget("x")
    cache.forget("never-seen")
    assert len(cache) == 1
    assert cache.derived(nets[1]) is held[1]
    assert cache.derived(nets[0]) is not held[0]


def test_a_plan_refuses_what_was_derived_from_another_spec() -> None:
    net = helpers.network_record([helpers.vnode("a")])
    stale = slots.derive(net)
    changed = net.model_copy(deep=True)
    changed.metadata.generation += 1
    with pytest.raises(ValueError, match=r"generation 2, but `derived` is of .* generation 1"):
        plan(changed, [], stale)
    other = dataclasses.replace(stale, uid="uid-other")
    with pytest.raises(ValueError, match="uid-other"):
        plan(net, [], other)
