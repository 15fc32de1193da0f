"""Each scorer on its own: normalized to [0, 1], and ordered the way its docstring promises."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scheduler import config, explain, model, placement, scorers
from tests.scheduler import helpers


@pytest.mark.parametrize(
    ("node", "req", "expected"),
    [
        # Empty node, request takes a quarter of cpu and of memory: 0.75 free on both.
        (
            helpers.node(cpu_capacity=4000, memory_capacity=4000),
            helpers.request(cpu=1000, memory=1000),
            0.75,
        ),
        # Allocated counts, and the request is counted as placed.
        (
            helpers.node(cpu_capacity=4000, memory_capacity=4000, cpu_allocated=2000),
            helpers.request(cpu=1000, memory=0),
            (0.25 + 1.0) / 2,
        ),
        # Exactly full after placing.
        (
            helpers.node(cpu_capacity=1000, memory_capacity=1000),
            helpers.request(cpu=1000, memory=1000),
            0.0,
        ),
        # The requested accelerator type is a third dimension.
        (
            helpers.node(cpu_capacity=1000, memory_capacity=1000, accelerators=(("a100", 4),)),
            helpers.request(cpu=0, memory=0, accelerator="a100", accelerator_count=2),
            (1.0 + 1.0 + 0.5) / 3,
        ),
        # Dimensions the node has no capacity in are ignored rather than dividing by zero.
        (
            helpers.node(cpu_capacity=0, memory_capacity=1000),
            helpers.request(cpu=0, memory=500),
            0.5,
        ),
        (helpers.node(cpu_capacity=0, memory_capacity=0), helpers.request(cpu=0, memory=0), 0.0),
        # Over-committed input (never produced by placement) still stays in range.
        (
            helpers.node(cpu_capacity=1000, memory_capacity=1000, cpu_allocated=5000),
            helpers.request(cpu=0, memory=0),
            0.5,
        ),
    ],
)
def test_least_allocated(node: model.NodeView, req: model.Request, expected: float) -> None:
    assert math.isclose(scorers.least_allocated(req, node), expected)


@pytest.mark.parametrize(
    ("missed", "evictions", "expected"),
    [(0, 0, 1.0), (1, 0, 0.5), (0, 1, 1 / 3), (3, 0, 0.25), (1, 1, 0.25)],
)
def test_reliability(missed: int, evictions: int, expected: float) -> None:
    node = helpers.node(missed_heartbeats=missed, evictions=evictions)
    assert math.isclose(scorers.reliability(helpers.request(), node), expected)


def test_eviction_costs_more_than_a_missed_heartbeat() -> None:
    req = helpers.request()
    missed = scorers.reliability(req, helpers.node(missed_heartbeats=1))
    evicted = scorers.reliability(req, helpers.node(evictions=1))
    assert evicted < missed < scorers.reliability(req, helpers.node())


@pytest.mark.parametrize(("trust", "expected"), [(0.0, 0.0), (0.3, 0.3), (1.0, 1.0), (7.0, 1.0)])
def test_trust(trust: float, expected: float) -> None:
    assert scorers.trust(helpers.request(), helpers.node(trust=trust)) == expected


@pytest.mark.parametrize(
    ("dataset", "held", "expected"),
    [
        ("mnist", {"mnist", "cifar"}, 1.0),
        ("mnist", {"cifar"}, 0.0),
        ("mnist", set(), 0.0),
        (None, {"mnist"}, 0.0),
    ],
)
def test_data_locality(dataset: str | None, held: set[str], expected: float) -> None:
    node = helpers.node(datasets=frozenset(held))
    assert scorers.data_locality(helpers.request(dataset=dataset), node) == expected


@pytest.mark.parametrize(
    ("near", "hosts_a_neighbour"),
    [({"p1"}, True), ({"p1", "p2"}, True), ({"p2"}, False), (set(), False)],
)
def test_graph_affinity(near: set[str], hosts_a_neighbour: bool) -> None:
    """A neighbour's PNode scores what it keeps free (cpu 3500/4000, memory 7.5/8 GiB after
    the request); any other PNode 0."""
    req = helpers.request(near=frozenset(near))
    expected = (3500 / 4000 + 7.5 / 8) / 2 if hosts_a_neighbour else 0.0
    assert scorers.graph_affinity(req, helpers.node("p1")) == pytest.approx(expected)


def test_graph_affinity_is_worth_less_as_a_neighbours_pnode_fills() -> None:
    req = helpers.request(near=frozenset({"p1"}))
    roomy = scorers.graph_affinity(req, helpers.node("p1"))
    full = scorers.graph_affinity(req, helpers.node("p1", cpu_allocated=3000))
    assert 0 < full < roomy


def test_zero_weight_switches_a_scorer_off() -> None:
    weights = config.Weights(trust=0.0, data_locality=0.0)
    names = [named.name for named, _ in scorers.active(weights)]
    assert names == ["least_allocated", "graph_affinity", "operator_spread", "reliability"]
    assert scorers.active(config.Weights(0, 0, 0, 0, 0, 0)) == ()


def test_every_weight_names_a_scorer() -> None:
    assert {named.name for named in scorers.ALL} == set(config.Weights.__dataclass_fields__)


@settings(max_examples=150, derandomize=True, deadline=None)
@given(
    cpu=st.tuples(st.integers(0, 10**5), st.integers(0, 10**5), st.integers(0, 10**5)),
    memory=st.tuples(st.integers(0, 2**40), st.integers(0, 2**40), st.integers(0, 2**40)),
    accelerators=st.tuples(st.integers(0, 8), st.integers(0, 8), st.integers(0, 8)),
    history=st.tuples(st.integers(0, 1000), st.integers(0, 1000)),
    trust=st.floats(0, 1),
)
def test_every_scorer_stays_in_unit_interval(cpu, memory, accelerators, history, trust) -> None:
    node = helpers.node(
        cpu_capacity=cpu[0],
        cpu_allocated=cpu[1],
        memory_capacity=memory[0],
        memory_allocated=memory[1],
        accelerators=(("a100", accelerators[0]),) if accelerators[0] else (),
        accelerators_allocated=(("a100", accelerators[1]),) if accelerators[1] else (),
        missed_heartbeats=history[0],
        evictions=history[1],
        trust=trust,
        datasets=frozenset({"mnist"}),
    )
    req = helpers.request(
        cpu=cpu[2],
        memory=memory[2],
        accelerator="a100",
        accelerator_count=accelerators[2],
        dataset="mnist",
        near=frozenset({"p1"}),
    )
    for named in scorers.ALL:
        assert 0.0 <= named.score(req, node) <= 1.0, named.name


@settings(max_examples=150, derandomize=True, deadline=None)
@given(
    node_datasets=st.sampled_from([frozenset(), frozenset({"mnist"})]),
    node_operators=st.sampled_from([frozenset(), frozenset({"net:a"}), frozenset({"net:b"})]),
    name=st.sampled_from(["p1", "p2"]),
    cpu_allocated=st.integers(0, 4000),
    dataset=st.sampled_from([None, "mnist", "imagenet"]),
    near=st.sampled_from([frozenset(), frozenset({"p1"}), frozenset({"p3"})]),
    avoid_operators=st.sampled_from([frozenset(), frozenset({"net:a"})]),
)
def test_a_uniform_score_is_what_the_scorer_gives_every_node(
    node_datasets, node_operators, name, cpu_allocated, dataset, near, avoid_operators
) -> None:
    """Placement skips a scorer for a request its `uniform` answers (issue 13): that answer
    must be exactly what the scorer would have given the node, whatever the node."""
    node = helpers.node(
        name,
        cpu_allocated=cpu_allocated,
        datasets=node_datasets,
        operators=node_operators,
    )
    req = helpers.request(dataset=dataset, near=near, avoid_operators=avoid_operators)
    for named in scorers.ALL:
        if named.uniform is not None and (same := named.uniform(req)) is not None:
            assert named.score(req, node) == same, named.name


def test_uniform_answers_for_the_requests_that_skip_a_scorer() -> None:
    """Not vacuous: a plain request (no dataset, nothing near, no replica placed) skips
    every scorer that has a `uniform`, and a request with all three skips none."""
    plain = helpers.request()
    rich = helpers.request(
        dataset="mnist", near=frozenset({"p1"}), avoid_operators=frozenset({"net:a"})
    )
    with_uniform = [named for named in scorers.ALL if named.uniform is not None]
    assert {named.name for named in with_uniform} == {
        "data_locality",
        "graph_affinity",
        "operator_spread",
    }
    assert all(named.uniform(plain) is not None for named in with_uniform)  # type: ignore[misc]
    assert all(named.uniform(rich) is None for named in with_uniform)  # type: ignore[misc]


# -- operators: replicas compared against each other on different operators ----------------


@pytest.mark.parametrize(
    ("address", "labels", "hints"),
    [
        ("203.0.113.7:7000", {}, {"net:203.0.113.0/24"}),
        ("[2001:db8:1:2::9]:7000", {}, {"net:2001:db8:1::/48"}),
        ("agent-3.example.org:7000", {}, {"host:agent-3.example.org"}),
        ("127.0.0.1:7000", {}, set()),
        ("[::1]:7000", {}, set()),
        ("localhost:7000", {}, set()),
        (
            "127.0.0.1:7000",
            {"dcnr.io/operator": "acme", "topology.kubernetes.io/zone": "eu-1", "x": "y"},
            {"label:dcnr.io/operator=acme", "label:topology.kubernetes.io/zone=eu-1"},
        ),
    ],
)
def test_operator_hints(address: str, labels: dict[str, str], hints: set[str]) -> None:
    assert model.operator_hints(address, labels) == hints


def test_operator_spread_scores_a_shared_hint_zero() -> None:
    req = helpers.request(avoid_operators=frozenset({"net:203.0.113.0/24"}))
    same = helpers.node("p1", operators=frozenset({"net:203.0.113.0/24", "label:z=a"}))
    other = helpers.node("p2", operators=frozenset({"net:198.51.100.0/24"}))
    unknown = helpers.node("p3")
    assert scorers.operator_spread(req, same) == 0.0
    assert scorers.operator_spread(req, other) == 1.0
    assert scorers.operator_spread(req, unknown) == 1.0


def test_a_replica_goes_to_another_operator_when_one_fits() -> None:
    """p1 holds replica 0; p2 shares its /24 and is otherwise the best choice (idle, holds
    the data, neighbour); p3 is another operator's, busier: replica 1 goes to p3."""
    acme, other = frozenset({"net:203.0.113.0/24"}), frozenset({"net:198.51.100.0/24"})
    snapshot = model.Snapshot(
        [
            helpers.node("p1", operators=acme),
            helpers.node("p2", operators=acme, datasets=frozenset({"d"})),
            helpers.node("p3", operators=other, cpu_allocated=3000),
        ]
    )
    req = helpers.request(replica=1, avoid=frozenset({"p1"}), near=frozenset({"p2"}), dataset="d")
    decision = placement.place(req, snapshot, seed=1)
    assert isinstance(decision, explain.Placed)
    assert decision.pnode == "p3"
    alone = model.Snapshot([helpers.node(n, operators=acme) for n in ("p1", "p2")])
    fallback = placement.place(req, alone, seed=1)
    assert isinstance(fallback, explain.Placed)
    assert fallback.pnode == "p2", "soft: never refused for want of another operator"
