"""The Network's graph: who consumes whom, and who exchanges tensors with whom. One place
for placement's affinity, slot hashes, assignments and the driver's replica counts."""

from __future__ import annotations

from api.resources import network


def make_network() -> network.Network:
    return network.Network.model_validate(
        {
            "metadata": {"name": "mlp"},
            "spec": {
                "vnodes": [
                    {"name": "input", "kind": "input"},
                    {"name": "hidden", "kind": "dense", "inputs": ["input"]},
                    {
                        "name": "loss",
                        "kind": "softmax_cross_entropy",
                        "inputs": ["hidden", "input"],
                    },
                ]
            },
        }
    )


def test_neighbours_are_parents_and_children() -> None:
    neighbours = make_network().neighbours()
    assert set(neighbours["hidden"]) == {"input", "loss"}
    assert set(neighbours["input"]) == {"hidden", "loss"}
    assert set(neighbours["loss"]) == {"hidden", "input"}
    assert "missing" not in neighbours


def test_neighbours_are_inputs_in_order_then_consumers_in_spec_order_each_once() -> None:
    net = make_network()
    assert net.neighbours() == {
        "input": ("hidden", "loss"),
        "hidden": ("input", "loss"),
        "loss": ("hidden", "input"),
    }
    assert net.consumers() == {"input": ("hidden", "loss"), "hidden": ("loss",), "loss": ()}


def test_a_vnode_is_never_its_own_neighbour_and_repeats_count_once() -> None:
    # Manifest validation refuses both; the graph stays well-defined for records built
    # without it.
    net = network.Network.model_construct(
        metadata=make_network().metadata,
        spec=network.NetworkSpec.model_construct(
            vnodes=[
                network.VNodeSpec.model_construct(name="a", kind="input", inputs=[]),
                network.VNodeSpec.model_construct(name="b", kind="dense", inputs=["a", "a", "b"]),
            ]
        ),
    )
    assert net.consumers() == {"a": ("b",), "b": ("b",)}
    assert net.neighbours() == {"a": ("b",), "b": ("a",)}
