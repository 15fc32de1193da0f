"""The Assignment message built for an agent: the replica counts of every input and output
VNode, as the network runs them now (validation policy and tiebreakers included)."""

from __future__ import annotations

import pytest

from api.resources import allocation, meta, network
from controller.services import pnode_wire
from controller.state import view as view_mod


def net(*, validation: network.ValidationPolicy, tiebreakers: list[str]) -> network.Network:
    return network.Network.model_validate(
        {
            "metadata": {"name": "net", "resourceVersion": 3, "uid": "u"},
            "spec": {
                "validation": validation,
                "vnodes": [
                    {"name": "src", "kind": "input", "replicas": 3},
                    {"name": "side", "kind": "input"},
                    {"name": "mid", "kind": "dense", "inputs": ["src", "side"]},
                    {"name": "out", "kind": "softmax", "inputs": ["mid"], "replicas": 2},
                    {"name": "tap", "kind": "relu", "inputs": ["mid"]},
                ],
            },
            "status": {"tiebreakers": tiebreakers},
        }
    )


def assignments(found: network.Network, *vnodes: str) -> dict[str, dict[str, int]]:
    items = []
    for name in vnodes:
        spec = found.vnode(name)
        assert spec is not None
        alloc = allocation.Allocation(
            metadata=meta.ObjectMeta(name=allocation.slot_name("net", name, 0)),
            spec=allocation.AllocationSpec(
                network="net", vnode=name, replica=0, pnode="p", epoch=1
            ),
        )
        items.append(view_mod.Assignment(alloc, found, spec))
    message = pnode_wire.assignment_set(view_mod.AssignmentSet(7, tuple(items)))
    return {a.vnode: dict(a.neighbour_replicas) for a in message.assignments}


@pytest.mark.parametrize(
    ("validation", "tiebreakers", "mid", "src"),
    [
        ("none", [], {"src": 3, "side": 1, "out": 2, "tap": 1}, {"mid": 1}),
        ("replicas", [], {"src": 3, "side": 2, "out": 2, "tap": 2}, {"mid": 2}),
        ("adaptive", ["side", "mid"], {"src": 3, "side": 3, "out": 2, "tap": 2}, {"mid": 3}),
        ("none", ["src", "tap"], {"src": 4, "side": 1, "out": 2, "tap": 2}, {"mid": 1}),
    ],
)
def test_neighbour_replicas_count_every_input_and_output(
    validation: network.ValidationPolicy,
    tiebreakers: list[str],
    mid: dict[str, int],
    src: dict[str, int],
) -> None:
    found = assignments(net(validation=validation, tiebreakers=tiebreakers), "mid", "src")
    assert found == {"mid": mid, "src": src}
