"""`dcnctl explain placement` describes the request the network loop makes for the slot:
the same siblings to avoid, the same neighbours to be near, the same resources, criticality
and data. Each test captures the request the plan hands the scheduler and the one the
explanation does, and fails if they diverge."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import pytest

from api.resources import allocation, network, pnode
from controller.services import placement_explain
from reconcilers import network_plan
from scheduler import config as scheduler_config
from scheduler import explain, model, placement
from tests.reconcilers import helpers

DATA = {"url": "s3://bucket/mnist", "dataset": "mnist"}


def critical_network() -> network.Network:
    vnodes = [
        {**helpers.vnode("input"), "data": DATA},
        {
            **helpers.vnode("hidden", inputs=["input"], replicas=3, accelerator={"type": "a100"}),
            "critical": True,
            "data": DATA,
        },
        helpers.vnode("loss", kind="softmax_cross_entropy", inputs=["hidden", "input"]),
    ]
    return helpers.network_record(vnodes)


def world(
    hidden_2_on: str | None,
) -> tuple[network.Network, list[allocation.Allocation], list[pnode.PNode]]:
    """hidden.0 on p2; hidden.1 on p7, which is Lost (its allocation will stop if nowhere
    else fits, so the plan no longer counts it as a sibling to avoid); hidden.2 on
    `hidden_2_on` (p8 drains: it migrates) or unplaced; input and loss placed."""
    net = critical_network()
    where = {("input", 0): "p1", ("hidden", 0): "p2", ("hidden", 1): "p7", ("loss", 0): "p3"}
    if hidden_2_on is not None:
        where["hidden", 2] = hidden_2_on
    allocations = [helpers.allocation_record(net, v, r, p) for (v, r), p in where.items()]
    accelerators = [{"type": "a100", "count": 2}]
    pnodes = [helpers.pnode_record(f"p{i}", accelerators=accelerators) for i in range(1, 7)]
    pnodes.append(helpers.pnode_record("p7", phase="Lost", accelerators=accelerators))
    pnodes.append(helpers.pnode_record("p8", draining=True, accelerators=accelerators))
    return net, allocations, pnodes


class Captured:
    def __init__(self) -> None:
        self.requests: list[model.Request] = []


@pytest.fixture
def captured(monkeypatch: pytest.MonkeyPatch) -> Captured:
    """Every request handed to the scheduler, one at a time (explain) or in a batch (plan)."""
    seen = Captured()
    place, place_all = placement.place, placement.place_all

    def place_one(request: model.Request, *args: Any, **kwargs: Any) -> explain.Decision:
        seen.requests.append(request)
        return place(request, *args, **kwargs)

    def place_batch(requests: Iterable[model.Request], *args: Any, **kwargs: Any) -> placement.Plan:
        requests = list(requests)
        seen.requests += requests
        return place_all(requests, *args, **kwargs)

    monkeypatch.setattr(placement, "place", place_one)
    monkeypatch.setattr(placement, "place_all", place_batch)
    return seen


@pytest.mark.parametrize("hidden_2_on", [None, "p8"], ids=["unplaced", "migrating"])
def test_explain_asks_for_exactly_the_request_the_plan_makes(
    captured: Captured, hidden_2_on: str | None
) -> None:
    net, allocations, pnodes = world(hidden_2_on)
    network_plan.compute_plan(net, allocations, pnodes, seed=7, now=helpers.NOW)
    planned = {r.key: r for r in captured.requests}
    captured.requests.clear()
    placement_explain.explain_slot(
        net, "hidden", 2, pnodes=pnodes, allocations=allocations, config=scheduler_config.DEFAULT
    )
    [explained] = captured.requests
    assert explained == planned["net.hidden.2"]
    # A request with every factor in play: siblings to avoid (not the one on the Lost
    # PNode, which the plan stops if it cannot move), neighbours to be near, data, critical.
    assert explained.avoid == {"p2"}
    assert explained.near == {"p1", "p3"}
    assert (explained.critical, explained.dataset, explained.accelerator) == (True, "mnist", "a100")


def test_a_placed_slot_is_explained_with_the_request_it_would_get_if_placed_now(
    captured: Captured,
) -> None:
    """The plan makes no request for a slot it keeps; explain asks as if the slot were
    placed now: its own PNode is no sibling, so only the others are avoided."""
    net, allocations, pnodes = world("p4")
    request = network_plan.slot_request(
        net, net.spec.vnodes[1], 2, allocations=allocations, pnodes=pnodes
    )
    placement_explain.explain_slot(
        net, "hidden", 2, pnodes=pnodes, allocations=allocations, config=scheduler_config.DEFAULT
    )
    assert captured.requests == [request]
    assert request.avoid == {"p2"}
