"""Converters from api.resources, the snapshot's indexes, and config validation."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from api.resources import allocation, meta, network, pnode
from scheduler import config, model
from tests.scheduler import helpers


def make_pnode(name: str = "p1", **status: object) -> pnode.PNode:
    return pnode.PNode.model_validate(
        {
            "metadata": {"name": name, "labels": {"zone": "eu", "arch": "arm64"}},
            "spec": {
                "address": "10.0.0.1:7000",
                "capacity": {
                    "cpu": "4",
                    "memory": "8Gi",
                    "accelerators": [
                        {"type": "a100", "count": 2},
                        {"type": "t4", "count": 1},
                        {"type": "a100", "count": 1},
                        {"type": "v100", "count": 0},
                    ],
                },
                "datasets": ["mnist", "cifar"],
                "unschedulable": True,
                "draining": True,
            },
            "status": {
                "phase": "NotReady",
                "allocated": {
                    "cpu": "1500m",
                    "memory": "1Gi",
                    "accelerators": [{"type": "a100", "count": 1}],
                },
                "trust": {"consecutiveValid": 150, "strikes": 0, "bugged": False},
                "missedHeartbeats": 3,
                "evictions": 1,
                **status,
            },
        }
    )


def test_node_view_reads_every_field() -> None:
    view = model.node_view(make_pnode())
    assert view == model.NodeView(
        name="p1",
        ready=False,
        schedulable=False,
        draining=True,
        bugged=False,
        cpu_capacity=4000,
        memory_capacity=8 * helpers.GiB,
        accelerators=(("a100", 3), ("t4", 1)),
        cpu_allocated=1500,
        memory_allocated=helpers.GiB,
        accelerators_allocated=(("a100", 1),),
        trust=0.75,
        missed_heartbeats=3,
        evictions=1,
        datasets=frozenset({"mnist", "cifar"}),
        labels=(("arch", "arm64"), ("zone", "eu")),
        operators=frozenset({"net:10.0.0.0/24"}),
    )


def test_node_view_bugged_has_no_trust() -> None:
    view = model.node_view(make_pnode(trust={"consecutiveValid": 500, "bugged": True}))
    assert view.bugged
    assert view.trust == 0.0


@pytest.mark.parametrize(
    ("valid", "strikes", "bugged", "expected"),
    [
        (0, 0, False, 0.0),
        (50, 0, False, 0.5),
        (150, 0, False, 0.75),
        (50, 1, False, 0.25),
        (1000, 0, True, 0.0),
    ],
)
def test_trust_score(valid: int, strikes: int, bugged: bool, expected: float) -> None:
    assert model.trust_score(valid, strikes, bugged=bugged) == pytest.approx(expected)


def make_network() -> network.Network:
    return network.Network.model_validate(
        {
            "metadata": {"name": "mlp"},
            "spec": {
                "vnodes": [
                    {
                        "name": "input",
                        "kind": "input",
                        "data": {"url": "s3://b/x", "dataset": "mnist"},
                    },
                    {
                        "name": "hidden",
                        "kind": "dense",
                        "inputs": ["input"],
                        "replicas": 3,
                        "critical": True,
                        "resources": {
                            "cpu": "250m",
                            "memory": "1Gi",
                            "accelerator": {"type": "a100", "count": 2},
                        },
                    },
                    {
                        "name": "loss",
                        "kind": "softmax_cross_entropy",
                        "inputs": ["hidden", "input"],
                    },
                ]
            },
        }
    )


def test_request_for_reads_the_vnode() -> None:
    net = make_network()
    hidden = net.vnode("hidden")
    assert hidden is not None
    req = model.request_for(net, hidden, 2, avoid=["p1", "p2"], near=("p3",))
    assert req == model.Request(
        network="mlp",
        vnode="hidden",
        replica=2,
        cpu=250,
        memory=helpers.GiB,
        accelerator="a100",
        accelerator_count=2,
        critical=True,
        dataset=None,
        avoid=frozenset({"p1", "p2"}),
        near=frozenset({"p3"}),
    )
    assert req.key == "mlp.hidden.2"
    source = net.vnode("input")
    assert source is not None
    plain = model.request_for(net, source, 0)
    assert (plain.accelerator, plain.accelerator_count, plain.dataset) == (None, 0, "mnist")
    assert (plain.cpu, plain.memory, plain.critical) == (100, 64 * helpers.MiB, False)


def make_allocation(net: str, vnode: str, replica: int, on: str) -> allocation.Allocation:
    return allocation.Allocation(
        metadata=meta.ObjectMeta(name=allocation.slot_name(net, vnode, replica)),
        spec=allocation.AllocationSpec(
            network=net, vnode=vnode, replica=replica, pnode=on, epoch=1
        ),
    )


def test_pnodes_hosting() -> None:
    allocations = [
        make_allocation("mlp", "hidden", 0, "p1"),
        make_allocation("mlp", "hidden", 1, "p2"),
        make_allocation("mlp", "loss", 0, "p3"),
        make_allocation("other", "hidden", 0, "p4"),
    ]
    assert model.pnodes_hosting(allocations, network="mlp", vnodes=["hidden"]) == {"p1", "p2"}
    assert model.pnodes_hosting(
        allocations, network="mlp", vnodes=["hidden"], except_slot="mlp.hidden.1"
    ) == {"p1"}
    assert model.pnodes_hosting(allocations, network="mlp", vnodes={"input", "loss"}) == {"p3"}


def test_snapshot_is_sorted_and_indexed() -> None:
    nodes = [
        helpers.node("c", trust=0.2, datasets=frozenset({"mnist"})),
        helpers.node("a", trust=0.9),
        helpers.node("b", trust=0.5, datasets=frozenset({"mnist", "cifar"})),
    ]
    snap = model.Snapshot(nodes)
    assert [n.name for n in snap.nodes] == ["a", "b", "c"]
    assert snap == model.Snapshot(reversed(nodes))
    assert snap.node("b") is snap.nodes[1]
    assert snap.node("zz") is None
    assert [snap.nodes[i].name for i in snap.by_trust] == ["a", "b", "c"]
    assert [snap.trusted_count(f) for f in (0.0, 0.2, 0.21, 0.5, 0.9, 0.95)] == [3, 3, 2, 2, 1, 0]
    assert snap.holders == {"mnist": (1, 2), "cifar": (1,)}
    assert model.snapshot_of([make_pnode("x"), make_pnode("w")]).by_name == {"w": 0, "x": 1}


def test_snapshot_rejects_duplicate_names() -> None:
    with pytest.raises(ValueError, match="pnode 'a' appears twice"):
        model.Snapshot([helpers.node("a"), helpers.node("a")])


def test_with_allocation_charges_the_request() -> None:
    node = helpers.node(accelerators=(("a100", 4), ("t4", 1)), accelerators_allocated=(("t4", 1),))
    after = node.with_allocation(
        helpers.request(cpu=300, memory=100, accelerator="a100", accelerator_count=3)
    )
    assert (after.cpu_allocated, after.memory_allocated) == (300, 100)
    assert after.accelerators_allocated == (("a100", 3), ("t4", 1))
    assert after.signature != node.signature


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: config.Config(sample_size=0), "sample_size = 0 is invalid; must be >= 1"),
        (
            lambda: config.Config(sample_size=2.5),  # type: ignore[arg-type]
            "sample_size = 2.5 is invalid; must be an integer",
        ),
        (
            lambda: config.Config(ordinary_sample_size=0),
            "ordinary_sample_size = 0 is invalid; must be >= 1",
        ),
        (
            lambda: config.Config(ordinary_sample_size=True),
            "ordinary_sample_size = True is invalid; must be an integer",
        ),
        (
            lambda: config.Config(trust_floor=1.5),
            "trust_floor = 1.5 is invalid; must be between 0.0 and 1.0",
        ),
        (
            lambda: config.Config(trust_floor=float("nan")),
            "trust_floor = nan is invalid; must be between 0.0 and 1.0",
        ),
        (
            lambda: config.Weights(trust=-1),
            "weights.trust = -1 is invalid; must be >= 0.0",
        ),
        (
            lambda: config.Config(max_explained_scores=-1),
            "max_explained_scores = -1 is invalid; must be >= 0",
        ),
    ],
)
def test_config_errors_name_field_value_and_valid_range(build, message: str) -> None:
    with pytest.raises(ValueError, match="scheduler config: ") as caught:
        build()
    assert message in str(caught.value)


# -- the view cache (issue 13): a view per record version ----------------------------------


def stored(name: str, *, version: int, uid: str = "u", cpu: int = 0) -> pnode.PNode:
    node = make_pnode(name)
    node.metadata.uid, node.metadata.resource_version = f"{uid}-{name}", version
    node.status.allocated.cpu = cpu
    return node


def test_view_cache_converts_a_record_once_per_version() -> None:
    cache = model.ViewCache()
    first = cache.views({"a": stored("a", version=1), "b": stored("b", version=1)})
    assert first == {"a": model.node_view(stored("a", version=1)), "b": first["b"]}
    # Equal records at the same version: the very same view objects come back.
    again = cache.views({"a": stored("a", version=1), "b": stored("b", version=1)})
    assert again["a"] is first["a"]
    assert again["b"] is first["b"]
    # A write (new version) is converted again; so is a re-created PNode (new uid).
    moved = cache.views(
        {"a": stored("a", version=2, cpu=500), "b": stored("b", version=1, uid="new")}
    )
    assert moved["a"].cpu_allocated == 500
    assert moved["b"] is not first["b"]
    assert moved["b"] == first["b"]  # the same content, converted anew


def test_view_cache_forgets_pnodes_that_are_gone_and_never_keeps_unstored_ones() -> None:
    cache = model.ViewCache()
    cache.views({"a": stored("a", version=1), "b": stored("b", version=1)})
    assert len(cache) == 2
    cache.views({"a": stored("a", version=1)})
    assert len(cache) == 1
    # Version 0: a record that was never stored; two such are not the same record.
    unstored = cache.views({"c": stored("c", version=0, cpu=1)})
    changed = cache.views({"c": stored("c", version=0, cpu=2)})
    assert (unstored["c"].cpu_allocated, changed["c"].cpu_allocated) == (1, 2)


def test_view_cache_reuses_a_view_for_the_very_same_record_object() -> None:
    """The informer hands the same objects pass after pass: no conversion, no version
    tuple; a new object at the same version still gets the cached view."""
    cache = model.ViewCache()
    record = stored("a", version=3)
    first = cache.views({"a": record})["a"]
    assert cache.views({"a": record})["a"] is first
    assert cache.views({"a": stored("a", version=3)})["a"] is first


# -- snapshots derived from the last one (issue 13) ----------------------------------------


def snapshot_facts(snap: model.Snapshot) -> tuple[object, ...]:
    """Everything placement reads of a snapshot, to compare a derived one to a fresh one."""
    floors = (0.0, 1e-9, 0.3, 0.5, 0.9)
    return (
        snap.nodes,
        dict(snap.by_name),
        snap.by_trust,
        dict(snap.holders),
        tuple(snap.trusted_count(f) for f in floors),
    )


def test_replaced_refuses_a_view_of_another_pnode() -> None:
    snap = model.Snapshot([helpers.node("a"), helpers.node("b")])
    with pytest.raises(ValueError, match="position 0 holds pnode 'a', not 'b'"):
        snap.replaced({0: helpers.node("b")})


#: One step of a pass: a PNode charged, its trust or datasets changed, one added or gone.
STEPS = st.lists(
    st.tuples(
        st.sampled_from(["charge", "trust", "dataset", "add", "remove", "nothing"]),
        st.integers(0, 11),
        st.sampled_from([0.0, 0.3, 0.6, 0.9]),
    ),
    max_size=25,
)


@settings(max_examples=150, derandomize=True, deadline=None)
@given(size=st.integers(0, 8), passes=st.lists(STEPS, min_size=1, max_size=5))
def test_a_derived_snapshot_equals_one_built_afresh(
    size: int, passes: list[list[tuple[str, int, float]]]
) -> None:
    """Pass after pass, whatever changed (allocations, trust, datasets, the set of PNodes),
    the cache's snapshot is exactly `Snapshot(views)`: same nodes, same indexes. That is
    what keeps placement a pure function of its inputs."""
    views = {f"p{i:02d}": helpers.node(f"p{i:02d}", trust=0.3) for i in range(size)}
    cache = model.ViewCache()
    derived = 0
    for steps in passes:
        last = cache.snapshot(dict(views)) if views else None
        for action, index, trust in steps:
            name = f"p{index:02d}"
            if action == "add" and name not in views:
                views[name] = helpers.node(name, trust=trust)
            elif action == "remove":
                views.pop(name, None)
            elif name in views and action == "charge":
                views[name] = dataclasses.replace(
                    views[name], cpu_allocated=views[name].cpu_allocated + 100
                )
            elif name in views and action == "trust":
                views[name] = dataclasses.replace(views[name], trust=trust)
            elif name in views and action == "dataset":
                views[name] = dataclasses.replace(views[name], datasets=frozenset({"mnist"}))
        snap = cache.snapshot(dict(views))
        assert snapshot_facts(snap) == snapshot_facts(model.Snapshot(views.values()))
        if last is not None and snap.by_name is last.by_name:
            derived += 1
    if size and all(a in ("charge", "nothing") for steps in passes for a, _, _ in steps):
        assert derived == len(passes), "same PNodes, only charges: always derived"


def test_a_snapshot_of_the_same_pnodes_is_derived_not_sorted_again() -> None:
    """Not vacuous: the derived path is taken (the indexes are the last snapshot's), and
    unchanged views leave the very same snapshot."""
    views = {n: helpers.node(n, trust=0.5) for n in ("c", "a", "b")}
    cache = model.ViewCache()
    first = cache.snapshot(views)
    assert cache.snapshot(dict(views)) is first
    views["b"] = dataclasses.replace(views["b"], cpu_allocated=500)
    second = cache.snapshot(views)
    assert second.by_name is first.by_name
    assert second.by_trust is first.by_trust
    assert second.node("b") is views["b"]
    views["a"] = dataclasses.replace(views["a"], trust=0.9)
    third = cache.snapshot(views)
    assert third.by_trust is not first.by_trust
    assert third.by_trust[0] == third.by_name["a"]
