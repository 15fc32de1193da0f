"""One capacity arithmetic: the PNode record the applier writes, the scheduler's batch
accounting and the plan's release of stopped allocations agree on every charge."""

from __future__ import annotations

from typing import Any

import pytest

from api.resources import amounts, network, pnode
from reconcilers import network_apply
from scheduler import model
from tests.reconcilers import helpers


def resources(
    cpu: str, memory: str, accelerator: dict[str, Any] | None = None
) -> network.ResourceRequest:
    body: dict[str, Any] = {"cpu": cpu, "memory": memory}
    if accelerator is not None:
        body["accelerator"] = accelerator
    return network.ResourceRequest.model_validate(body)


BIG = resources("1", "1Gi", {"type": "a100", "count": 2})
SMALL = resources("250m", "64Mi")
T4 = resources("500m", "128Mi", {"type": "t4", "count": 1})

#: (charge or release, resources) in order; the record starts empty.
STEPS: dict[str, list[tuple[int, network.ResourceRequest]]] = {
    "charges": [(+1, BIG), (+1, SMALL), (+1, T4), (+1, BIG)],
    "charges-then-releases": [(+1, BIG), (+1, T4), (-1, BIG), (+1, SMALL), (-1, T4)],
    "release-of-more-than-charged": [(+1, SMALL), (-1, BIG), (+1, T4)],
}


def node() -> pnode.PNode:
    return helpers.pnode_record(
        "p1",
        cpu="8",
        memory="16Gi",
        accelerators=[{"type": "a100", "count": 4}, {"type": "t4", "count": 2}],
    )


@pytest.mark.parametrize("steps", list(STEPS.values()), ids=list(STEPS))
def test_the_record_and_the_views_agree(steps: list[tuple[int, network.ResourceRequest]]) -> None:
    record = node()
    view = model.node_view(record)
    batch = model.node_view(record)  # the scheduler's accounting charges requests
    for sign, request in steps:
        if sign > 0:
            record = network_apply.charged(record, add=request)
            batch = batch.with_allocation(
                model.Request(
                    network="n",
                    vnode="v",
                    cpu=request.cpu,
                    memory=request.memory,
                    accelerator=None if request.accelerator is None else request.accelerator.type,
                    accelerator_count=0
                    if request.accelerator is None
                    else request.accelerator.count,
                )
            )
        else:
            record = network_apply.charged(record, remove=request)
            batch = batch.charged(amounts.of_request(request), -1)
        view = view.charged(amounts.of_request(request), sign)
        assert model.node_view(record).allocated == view.allocated == batch.allocated
    assert record.status.assignments_version == len(steps)


def test_the_record_keeps_its_canonical_accelerator_list() -> None:
    record = network_apply.charged(node(), add=BIG)
    record = network_apply.charged(record, add=T4)
    assert [(a.type, a.count, a.memory) for a in record.status.allocated.accelerators] == [
        ("a100", 2, 0),
        ("t4", 1, 0),
    ]
    record = network_apply.charged(record, remove=BIG)
    assert [(a.type, a.count) for a in record.status.allocated.accelerators] == [("t4", 1)]
    unchanged = network_apply.charged(record, add=SMALL)
    assert unchanged.status.allocated.accelerators == record.status.allocated.accelerators


def test_a_charge_past_capacity_is_refused_naming_the_resource() -> None:
    record = network_apply.charged(node(), add=BIG)
    record = network_apply.charged(record, add=BIG)
    with pytest.raises(
        network_apply.OverCommit, match="'p1': accelerator a100 would be 6, above its capacity 4"
    ):
        network_apply.charged(record, add=BIG)
    # A release alone never fails, even on an over-committed record.
    over = record.model_copy(deep=True)
    over.spec.capacity.cpu = 1000
    assert network_apply.charged(over, remove=SMALL).status.allocated.cpu == 1750
