"""The pure network plan: every rule of the ordered table, first match wins, epochs,
anti-affinity, status and determinism. No store, no clock: just values in and out."""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest

from api.resources import allocation, network, pnode
from reconcilers import network_actions as actions
from reconcilers import network_plan, slots
from tests.reconcilers import helpers
from tests.reconcilers.helpers import NOW

SLOT = "net.a.0"
Scenario = tuple[network.Network, list[allocation.Allocation], list[pnode.PNode]]


def plan_of(scenario: Scenario, *, seed: int = 7, now=NOW) -> actions.NetworkPlan:
    net, allocations, pnodes = scenario
    return network_plan.compute_plan(net, allocations, pnodes, seed=seed, now=now)


def action_for(plan: actions.NetworkPlan, slot: str) -> actions.Action:
    found = [a for a in plan.actions if _slot(a) == slot]
    assert len(found) == 1, f"expected one action for {slot}, got {found}"
    return found[0]


def _slot(action: actions.Action) -> str:
    return action.slot if isinstance(action, actions.Place) else action.allocation.metadata.name


def scenario(
    *,
    vnodes: list[dict[str, Any]] | None = None,
    on: str = "p1",
    p1: dict[str, Any] | None = None,
    others: int = 2,
    deleting: bool = False,
    vnode_name: str = "a",
    replica: int = 0,
    epoch: int = 3,
    incarnation: int = 1,
    vnode_hash: str | None = None,
) -> Scenario:
    """Network with vnode `a` (unless told otherwise), one allocation of it on `on`, the
    PNode p1 (with `p1` overrides) and `others` more roomy PNodes p2, p3, ..."""
    net = helpers.network_record(vnodes or [helpers.vnode("a")], deleting=deleting)
    alloc = helpers.allocation_record(
        net, vnode_name, replica, on, epoch=epoch, incarnation=incarnation, vnode_hash=vnode_hash
    )
    first = helpers.pnode_record("p1", **(p1 or {}))
    if on == "p1":
        first = helpers.charge(first, alloc)
    rest = [helpers.pnode_record(f"p{i}") for i in range(2, 2 + others)]
    return net, [alloc], [first, *rest]


@dataclasses.dataclass(frozen=True)
class Case:
    rule: str
    build: Callable[[], Scenario]
    kind: type
    reason: str


RULE_CASES = [
    Case("network-deleting", lambda: scenario(deleting=True), actions.Stop,
         "network is being deleted"),
    Case("vnode-removed", lambda: scenario(vnodes=[helpers.vnode("b")]), actions.Stop,
         "vnode removed from spec"),
    Case("replica-scaled-down", lambda: scenario(replica=1), actions.Stop,
         "replica scaled down"),
    Case("pnode-gone", lambda: scenario(on="p9"), actions.Migrate, "pnode gone"),
    Case("pnode-lost", lambda: scenario(p1={"phase": "Lost"}), actions.Migrate, "pnode lost"),
    Case("pnode-bugged", lambda: scenario(p1={"bugged": True}), actions.Migrate,
         "pnode bugged"),
    Case("pnode-draining", lambda: scenario(p1={"draining": True}), actions.Migrate,
         "pnode draining"),
    Case("pnode-re-registered", lambda: scenario(p1={"incarnation": 2}), actions.Reissue,
         "pnode re-registered"),
    Case("vnode-changed", lambda: scenario(vnode_hash="0123456789abcdef"), actions.Reissue,
         "vnode spec changed"),
    Case("pnode-not-ready", lambda: scenario(p1={"phase": "NotReady"}), actions.Keep,
         "pnode not ready; kept through the grace before it is declared lost"),
    Case("current", lambda: scenario(), actions.Keep, "placed and current"),
]  # fmt: skip


@pytest.mark.parametrize("case", RULE_CASES, ids=[c.rule for c in RULE_CASES])
def test_each_rule_of_the_table(case: Case) -> None:
    plan = plan_of(case.build())
    action = action_for(plan, SLOT if case.rule != "replica-scaled-down" else "net.a.1")
    assert type(action) is case.kind
    assert action.reason == case.reason
    alloc = case.build()[1][0]
    facts = network_plan.Facts(alloc, *_facts_of(case.build(), alloc))
    assert network_plan.classify(facts).name == case.rule


def _facts_of(built: Scenario, alloc: allocation.Allocation):
    net, _, pnodes = built
    by_name = {p.metadata.name: p for p in pnodes}
    return (
        net,
        net.vnode(alloc.spec.vnode),
        by_name.get(alloc.spec.pnode),
        slots.vnode_hashes(net).get(alloc.spec.vnode),
    )


def test_the_cases_cover_every_rule() -> None:
    assert [c.rule for c in RULE_CASES] == [r.name for r in network_plan.RULES]


@pytest.mark.parametrize(
    ("build", "rule"),
    [
        pytest.param(
            lambda: scenario(vnodes=[helpers.vnode("b")], p1={"phase": "Lost"}),
            "vnode-removed",
            id="removed-vnode-on-lost-pnode-stops",
        ),
        pytest.param(
            lambda: scenario(replica=1, p1={"draining": True}),
            "replica-scaled-down",
            id="scaled-down-on-draining-pnode-stops",
        ),
        pytest.param(
            lambda: scenario(deleting=True, on="p9"), "network-deleting", id="deleting-beats-gone"
        ),
        pytest.param(
            lambda: scenario(p1={"phase": "Lost", "incarnation": 5}),
            "pnode-lost",
            id="lost-beats-re-registered",
        ),
        pytest.param(
            lambda: scenario(p1={"bugged": True, "draining": True}),
            "pnode-bugged",
            id="bugged-beats-draining",
        ),
        pytest.param(
            lambda: scenario(p1={"draining": True}, vnode_hash="x"),
            "pnode-draining",
            id="draining-beats-vnode-changed",
        ),
        pytest.param(
            lambda: scenario(p1={"incarnation": 2}, vnode_hash="x"),
            "pnode-re-registered",
            id="re-registered-beats-vnode-changed",
        ),
        pytest.param(
            lambda: scenario(p1={"phase": "NotReady"}, vnode_hash="x"),
            "vnode-changed",
            id="vnode-changed-beats-not-ready",
        ),
    ],
)
def test_first_matching_rule_wins(build: Callable[[], Scenario], rule: str) -> None:
    built = build()
    alloc = built[1][0]
    assert network_plan.classify(network_plan.Facts(alloc, *_facts_of(built, alloc))).name == rule
    expected = next(r for r in network_plan.RULES if r.name == rule)
    assert action_for(plan_of(built), alloc.metadata.name).reason == expected.reason


def test_a_slot_without_allocation_is_placed_at_epoch_one() -> None:
    net = helpers.network_record([helpers.vnode("a", replicas=2)])
    plan = plan_of((net, [], [helpers.pnode_record("p1"), helpers.pnode_record("p2")]))
    places = [a for a in plan.actions if isinstance(a, actions.Place)]
    assert sorted(p.slot for p in places) == ["net.a.0", "net.a.1"]
    assert {p.epoch for p in places} == {1}
    assert len({p.pnode for p in places}) == 2  # replicas on different PNodes
    assert all(p.vnode_hash == slots.vnode_hash(net, "a") for p in places)


# -- when no PNode can take a migrating slot -----------------------------------------------


def _grown_beyond_every_pnode() -> Scenario:
    old = helpers.allocation_record(helpers.network_record([helpers.vnode("a")]), "a", 0, "p1",
                                    epoch=3)  # fmt: skip
    net = helpers.network_record([helpers.vnode("a", cpu="8")])
    return net, [old], [helpers.charge(helpers.pnode_record("p1"), old)]


@pytest.mark.parametrize(
    ("build", "kind", "reason"),
    [
        pytest.param(lambda: scenario(p1={"phase": "Lost"}, others=0), actions.Stop,
                     "pnode lost; no pnode can take it", id="lost-stops"),
        pytest.param(lambda: scenario(on="p9", p1={"cordoned": True}, others=0), actions.Stop,
                     "pnode gone; no pnode can take it", id="gone-stops"),
        pytest.param(lambda: scenario(p1={"incarnation": 2, "cpu": "100m"}, others=0),
                     actions.Stop, "pnode re-registered; no pnode can take it",
                     id="re-registered-smaller-stops"),
        pytest.param(lambda: scenario(p1={"draining": True}, others=0), actions.Keep,
                     "pnode draining; kept in place until a pnode can take it",
                     id="draining-keeps"),
        pytest.param(lambda: scenario(p1={"bugged": True}, others=0), actions.Keep,
                     "pnode bugged; kept in place until a pnode can take it", id="bugged-keeps"),
        pytest.param(_grown_beyond_every_pnode, actions.Keep,
                     "vnode spec changed; kept in place until a pnode can take it",
                     id="changed-to-fit-nowhere-keeps"),
    ],
)  # fmt: skip
def test_unplaceable_migration_stops_if_old_placement_is_dead_else_keeps(
    build, kind, reason
) -> None:
    plan = plan_of(build())
    action = action_for(plan, SLOT)
    assert type(action) is kind
    assert action.reason == reason
    assert SLOT in plan.unschedulable
    assert _condition(plan, "Unschedulable").status == "True"
    if kind is actions.Stop:
        assert plan.status.slot_epochs == {SLOT: 3}  # the next placement continues from 3
        assert plan.status.ready_slots == 0
    else:
        assert plan.status.slot_epochs == {}


def test_a_reissue_that_no_longer_fits_migrates() -> None:
    net = helpers.network_record([helpers.vnode("a", cpu="3")])
    old = helpers.allocation_record(helpers.network_record([helpers.vnode("a")]), "a", 0, "p1")
    p1 = helpers.charge(helpers.pnode_record("p1", cpu="2"), old)
    plan = plan_of((net, [old], [p1, helpers.pnode_record("p2")]))
    action = action_for(plan, SLOT)
    assert isinstance(action, actions.Migrate)
    assert (action.to_pnode, action.reason) == ("p2", "vnode spec changed")
    assert action.resources.cpu == 3000


def test_a_reissue_that_still_fits_stays_and_resizes() -> None:
    net = helpers.network_record([helpers.vnode("a", cpu="2")])
    old = helpers.allocation_record(helpers.network_record([helpers.vnode("a")]), "a", 0, "p1")
    p1 = helpers.charge(helpers.pnode_record("p1", cpu="2500m"), old)
    action = action_for(plan_of((net, [old], [p1])), SLOT)
    assert isinstance(action, actions.Reissue)
    assert action.record().spec.pnode == "p1"
    assert action.resources.cpu == 2000


# -- epochs --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "p1",
    [{"phase": "Lost"}, {"draining": True}, {"bugged": True}, {"incarnation": 4}],
    ids=["migrate-lost", "migrate-draining", "migrate-bugged", "reissue-re-registered"],
)
def test_epoch_bumps_on_every_move_and_reissue(p1) -> None:
    plan = plan_of(scenario(p1=p1, epoch=7))
    action = action_for(plan, SLOT)
    assert isinstance(action, actions.Migrate | actions.Reissue)
    record = action.record()
    assert record.spec.epoch == 8
    if "incarnation" in p1:
        assert record.spec.pnode_incarnation == 4


def test_epoch_never_decreases_across_a_gap_without_allocation() -> None:
    net, allocs, pnodes = scenario(p1={"phase": "Lost"}, others=0, epoch=5)
    first = plan_of((net, allocs, pnodes))
    assert isinstance(action_for(first, SLOT), actions.Stop)
    # The Stop is applied (the epoch is remembered in status), then a PNode joins.
    net = net.model_copy(update={"status": first.status})
    second = plan_of((net, [], [helpers.pnode_record("p2")]))
    place = action_for(second, SLOT)
    assert isinstance(place, actions.Place)
    assert place.epoch == 6
    assert second.status.slot_epochs == {}  # the allocation now holds the epoch


def test_scaled_down_slot_keeps_its_epoch_for_a_later_scale_up() -> None:
    plan = plan_of(scenario(replica=1, epoch=4))
    assert plan.status.slot_epochs == {"net.a.1": 4}


# -- anti-affinity and affinity ------------------------------------------------------------


def test_migrated_replica_avoids_its_siblings_pnodes() -> None:
    net = helpers.network_record([helpers.vnode("a", replicas=2)])
    a0 = helpers.allocation_record(net, "a", 0, "p1")
    a1 = helpers.allocation_record(net, "a", 1, "p2")
    pnodes = [
        helpers.charge(helpers.pnode_record("p1", phase="Lost"), a0),
        helpers.charge(helpers.pnode_record("p2"), a1),
        helpers.pnode_record("p3"),
    ]
    for seed in range(10):
        migrate = action_for(plan_of((net, [a0, a1], pnodes), seed=seed), SLOT)
        assert isinstance(migrate, actions.Migrate)
        assert migrate.to_pnode == "p3"
    only_sibling = plan_of((net, [a0, a1], pnodes[:2]))
    assert "1 host another replica" in only_sibling.unschedulable[SLOT].message


def test_two_replicas_migrating_together_land_apart() -> None:
    net = helpers.network_record([helpers.vnode("a", replicas=2)])
    allocs = [helpers.allocation_record(net, "a", r, "p1") for r in (0, 1)]
    pnodes = [helpers.charge(helpers.pnode_record("p1", phase="Lost"), *allocs)]
    pnodes += [helpers.pnode_record(f"p{i}") for i in range(2, 6)]
    for seed in range(10):
        plan = plan_of((net, allocs, pnodes), seed=seed)
        targets = [a.to_pnode for a in plan.actions if isinstance(a, actions.Migrate)]
        assert len(targets) == 2
        assert len(set(targets)) == 2


def test_placement_prefers_pnodes_hosting_neighbours() -> None:
    net = helpers.network_record([helpers.vnode("a"), helpers.vnode("b", inputs=["a"])])
    a0 = helpers.allocation_record(net, "a", 0, "p3")
    pnodes = [helpers.pnode_record(f"p{i}") for i in range(1, 6)]
    pnodes[2] = helpers.charge(pnodes[2], a0)
    places = [plan_of((net, [a0], pnodes), seed=s).actions[0] for s in range(10)]
    assert all(isinstance(p, actions.Place) and p.pnode == "p3" for p in places)


# -- status --------------------------------------------------------------------------------


def _condition(plan: actions.NetworkPlan, kind: str):
    return next(c for c in plan.status.conditions if c.type == kind)


def test_status_ready_when_every_slot_is_placed_on_ready_pnodes() -> None:
    net = helpers.network_record([helpers.vnode("a", replicas=2), helpers.vnode("b")], generation=4)
    plan = plan_of((net, [], [helpers.pnode_record(f"p{i}") for i in range(3)]))
    status = plan.status
    assert (status.phase, status.desired_slots, status.ready_slots) == ("Ready", 3, 3)
    assert status.observed_generation == 4
    ready = _condition(plan, "Ready")
    assert (ready.status, ready.reason, ready.message) == ("True", "SlotsReady", "3/3 slots ready")
    assert ready.last_transition_time == NOW
    assert _condition(plan, "Unschedulable").status == "False"


def test_status_unschedulable_counts_reasons() -> None:
    net = helpers.network_record(
        [helpers.vnode("a"), helpers.vnode("gpu", memory="4Gi", accelerator={"type": "a100"})]
    )
    pnodes = [helpers.pnode_record("p1"), helpers.pnode_record("p2"),
              helpers.pnode_record("p3", memory="1Gi")]  # fmt: skip
    plan = plan_of((net, [], pnodes))
    assert list(plan.unschedulable) == ["net.gpu.0"]
    condition = _condition(plan, "Unschedulable")
    assert (condition.status, condition.reason) == ("True", "Unschedulable")
    assert condition.message == (
        "0/3 pnodes available: 2 lack accelerator a100, 1 insufficient memory (slot net.gpu.0)"
    )
    assert plan.status.phase == "Allocating"
    assert (plan.status.desired_slots, plan.status.ready_slots) == (2, 1)
    assert _condition(plan, "Ready").status == "False"


def test_status_pending_when_nothing_can_be_placed() -> None:
    plan = plan_of((helpers.network_record([helpers.vnode("a")]), [], []))
    assert plan.status.phase == "Pending"
    assert _condition(plan, "Unschedulable").message == (
        "0/0 pnodes available: no pnodes registered (slot net.a.0)"
    )


@pytest.mark.parametrize(
    ("previous", "expected"), [("Ready", "Degraded"), ("Degraded", "Degraded"),
                               ("Allocating", "Allocating")]
)  # fmt: skip
def test_status_degraded_when_a_ready_network_loses_a_slot(previous, expected) -> None:
    net, allocs, pnodes = scenario(p1={"phase": "NotReady"})
    net = net.model_copy(update={"status": network.NetworkStatus(phase=previous)})
    plan = plan_of((net, allocs, pnodes))
    assert isinstance(action_for(plan, SLOT), actions.Keep)
    assert (plan.status.phase, plan.status.ready_slots) == (expected, 0)
    assert "1 on pnodes not ready" in _condition(plan, "Ready").message


def test_status_terminating() -> None:
    plan = plan_of(scenario(deleting=True))
    assert plan.status.phase == "Terminating"
    assert _condition(plan, "Ready").reason == "Terminating"


def test_condition_transition_time_is_kept_while_status_holds() -> None:
    net, allocs, pnodes = scenario()
    first = plan_of((net, allocs, pnodes), now=NOW)
    net = net.model_copy(update={"status": first.status})
    later = plan_of((net, allocs, pnodes), now=NOW + timedelta(hours=1))
    assert later.status == first.status  # nothing changed, so nothing to write
    flip = NOW + timedelta(hours=3)
    not_ready = plan_of((net, allocs, [helpers.pnode_record("p1", phase="NotReady")]), now=flip)
    assert not_ready.status != first.status
    assert _condition(not_ready, "Ready").last_transition_time == flip  # True -> False
    assert _condition(not_ready, "Unschedulable").last_transition_time == NOW  # still False


# -- determinism ---------------------------------------------------------------------------


def test_same_inputs_same_plan_whatever_the_listing_order() -> None:
    net = helpers.network_record(
        [helpers.vnode(f"v{i}", replicas=2, inputs=[f"v{i - 1}"] if i else []) for i in range(8)]
    )
    pnodes = [helpers.pnode_record(f"p{i}", cpu="2") for i in range(6)]
    lost = helpers.pnode_record("lost", phase="Lost")
    allocs = [helpers.allocation_record(net, "v0", r, "lost") for r in (0, 1)]
    baseline = plan_of((net, allocs, [lost, *pnodes]), seed=11)
    rng = random.Random(3)
    for _ in range(5):
        shuffled_pnodes = [lost, *pnodes]
        rng.shuffle(shuffled_pnodes)
        again = plan_of((net, list(reversed(allocs)), shuffled_pnodes), seed=11)
        assert again == baseline
    assert any(isinstance(a, actions.Migrate) for a in baseline.actions)


def test_seed_comes_from_uid_and_generation() -> None:
    net = helpers.network_record([helpers.vnode("a")])
    assert slots.seed_for(net) == slots.seed_for(net.model_copy(deep=True))
    bumped = net.model_copy(deep=True)
    bumped.metadata.generation += 1
    assert slots.seed_for(bumped) != slots.seed_for(net)


# -- vnode hash ----------------------------------------------------------------------------


def _hash_after(change: Callable[[dict[str, Any]], None]) -> str:
    vnodes = [helpers.vnode("a", params={"units": 3}), helpers.vnode("b", inputs=["a"])]
    change(vnodes[0])
    return slots.vnode_hash(helpers.network_record(vnodes), "a")


BASE_HASH = _hash_after(lambda v: None)


@pytest.mark.parametrize(
    ("change", "differs"),
    [
        pytest.param(lambda v: v.update(replicas=3), False, id="replicas-ignored"),
        pytest.param(lambda v: v.update(params={"units": 4}), True, id="params"),
        pytest.param(lambda v: v.update(kind="conv"), True, id="kind"),
        pytest.param(lambda v: v["resources"].update(cpu="1"), True, id="resources"),
        pytest.param(lambda v: v.update(critical=True), True, id="critical"),
        pytest.param(lambda v: v.update(data={"url": "s3://b/x"}), True, id="data"),
    ],
)
def test_vnode_hash_covers_what_the_vnode_runs(change, differs) -> None:
    assert (_hash_after(change) != BASE_HASH) is differs
    assert len(BASE_HASH) == slots.HASH_CHARS


def test_vnode_hash_changes_with_children() -> None:
    one = helpers.network_record([helpers.vnode("a"), helpers.vnode("b", inputs=["a"])])
    two = helpers.network_record(
        [helpers.vnode("a"), helpers.vnode("b", inputs=["a"]), helpers.vnode("c", inputs=["a"])]
    )
    assert slots.vnode_hash(one, "a") != slots.vnode_hash(two, "a")
    assert slots.vnode_hash(one, "b") == slots.vnode_hash(two, "b")
    with pytest.raises(ValueError, match="has no vnode 'zz'"):
        slots.vnode_hash(one, "zz")
