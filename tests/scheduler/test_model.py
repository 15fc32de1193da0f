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


def stored(
    name: str,
    *,
    version: int,
    uid: str = "u",
    cpu: int = 0,
    valid: int = 0,
    datasets: tuple[str, ...] = ("mnist", "cifar"),
) -> pnode.PNode:
    node = make_pnode(name)
    node.metadata.uid, node.metadata.resource_version = f"{uid}-{name}", version
    node.status.allocated.cpu = cpu
    node.status.trust.consecutive_valid = valid
    node.spec.datasets = list(datasets)
    return node


def test_view_cache_converts_a_record_once_per_version() -> None:
    cache = model.ViewCache()
    first = dict(cache.views({"a": stored("a", version=1), "b": stored("b", version=1)}))
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
    unstored = cache.views({"c": stored("c", version=0, cpu=1)})["c"]
    changed = cache.views({"c": stored("c", version=0, cpu=2)})["c"]
    assert (unstored.cpu_allocated, changed.cpu_allocated) == (1, 2)


def test_view_cache_reuses_a_view_for_the_very_same_record_object() -> None:
    """The informer hands the same objects pass after pass: no conversion, no version
    tuple; a new object at the same version still gets the cached view."""
    cache = model.ViewCache()
    record = stored("a", version=3)
    first = cache.views({"a": record})["a"]
    assert cache.views({"a": record})["a"] is first
    assert cache.views({"a": stored("a", version=3)})["a"] is first


def test_told_what_changed_the_cache_looks_at_nothing_else() -> None:
    """Not vacuous: with `changed`, a PNode whose record changed but was not named keeps
    its old view (that is the saving), and a named one is converted."""
    cache = model.ViewCache()
    pnodes = {n: stored(n, version=1) for n in ("a", "b")}
    cache.views(pnodes)
    pnodes["a"], pnodes["b"] = stored("a", version=2, cpu=7), stored("b", version=2, cpu=9)
    views = cache.views(pnodes, changed={"b"})
    assert (views["a"].cpu_allocated, views["b"].cpu_allocated) == (0, 9)
    assert cache.views(pnodes)["a"].cpu_allocated == 7  # untold: every record looked at


def test_a_pnode_come_or_gone_untold_is_found_by_the_count() -> None:
    cache = model.ViewCache()
    pnodes = {n: stored(n, version=1) for n in ("a", "b")}
    cache.views(pnodes)
    pnodes["c"] = stored("c", version=1)
    assert set(cache.views(pnodes, changed=set())) == {"a", "b", "c"}
    del pnodes["a"]
    assert set(cache.views(pnodes, changed=set())) == {"b", "c"}


def test_extra_pnodes_are_viewed_until_neither_source_has_them() -> None:
    """A PNode read from the store that the informer has not brought yet (`extra`) gets a
    view; the informer's record wins once it has one; gone from both, it is forgotten
    without anyone naming it."""
    cache = model.ViewCache()
    informer = {"a": stored("a", version=1)}
    assert set(cache.views(informer, changed=None, extra={"x": stored("x", version=4)})) == {
        "a",
        "x",
    }
    informer["x"] = stored("x", version=5, cpu=3)
    views = cache.views(informer, changed={"x"}, extra={"x": stored("x", version=4)})
    assert views["x"].cpu_allocated == 3
    del informer["x"]
    assert set(cache.views(informer, changed={"x"}, extra={"x": stored("x", version=6)})) == {
        "a",
        "x",
    }
    assert set(cache.views(informer, changed=set())) == {"a"}


# -- snapshots kept up to date from the changes (issue 13) ---------------------------------


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


#: One step between passes: a PNode charged, its trust or datasets changed, one added or
#: gone; or this pass charging a PNode in its own overlay.
STEPS = st.lists(
    st.tuples(
        st.sampled_from(["charge", "trust", "dataset", "add", "remove", "overlay", "nothing"]),
        st.integers(0, 11),
        st.integers(0, 400),
    ),
    max_size=25,
)


@settings(max_examples=150, derandomize=True, deadline=None)
@given(size=st.integers(0, 8), passes=st.lists(STEPS, min_size=1, max_size=5))
def test_a_kept_snapshot_equals_one_built_afresh(
    size: int, passes: list[list[tuple[str, int, int]]]
) -> None:
    """Pass after pass, whatever changed (allocations, trust, datasets, the set of PNodes)
    and whatever a pass charges in its overlay, the cache's snapshot told only the changed
    names is exactly `Snapshot` of every record's view with the overlay on top: same nodes,
    same indexes. That is what keeps placement a pure function of its inputs."""
    pnodes = {f"p{i:02d}": stored(f"p{i:02d}", version=1) for i in range(size)}
    cache = model.ViewCache()
    cache.views(pnodes)
    kept = 0
    for steps in passes:
        last = cache.snapshot()
        changed: set[str] = set()
        overlay: dict[str, model.NodeView] = {}
        for action, index, amount in steps:
            name = f"p{index:02d}"
            old = pnodes.get(name)
            version = 1 if old is None else old.metadata.resource_version + 1
            if action == "add" and old is None:  # a re-created PNode: another uid
                pnodes[name] = stored(name, version=1, valid=amount, uid=f"u{amount}-{index}")
            elif action == "remove" and old is not None:
                del pnodes[name]
            elif old is not None and action == "charge":
                pnodes[name] = stored(name, version=version, cpu=amount)
            elif old is not None and action == "trust":
                pnodes[name] = stored(name, version=version, valid=amount)
            elif old is not None and action == "dataset":
                pnodes[name] = stored(name, version=version, datasets=("imagenet",))
            elif old is not None and action == "overlay":
                overlay[name] = dataclasses.replace(model.node_view(old), cpu_allocated=amount)
                continue
            changed.add(name)
        views = cache.views(pnodes, changed=changed)
        overlay = {n: v for n, v in overlay.items() if n in pnodes}
        snap = cache.snapshot(overlay)
        fresh = model.Snapshot(
            {**{n: model.node_view(p) for n, p in pnodes.items()}, **overlay}.values()
        )
        assert snapshot_facts(snap) == snapshot_facts(fresh)
        assert set(views) == set(pnodes)
        if snap.by_name is last.by_name:
            kept += 1
    if size and all(a in ("charge", "overlay", "nothing") for s in passes for a, _, _ in s):
        assert kept == len(passes), "same PNodes, only charges: the indexes are kept"


def test_a_snapshot_of_the_same_pnodes_is_patched_not_sorted_again() -> None:
    """Not vacuous: the patched path is taken (the indexes are the last snapshot's),
    unchanged views leave the very same snapshot, and an overlay never stays in it."""
    pnodes = {n: stored(n, version=1, valid=50) for n in ("c", "a", "b")}
    cache = model.ViewCache()
    cache.views(pnodes)
    first = cache.snapshot()
    cache.views(pnodes, changed=set())
    assert cache.snapshot() is first
    pnodes["b"] = stored("b", version=2, cpu=500, valid=50)
    views = cache.views(pnodes, changed={"b"})
    second = cache.snapshot()
    assert second.by_name is first.by_name
    assert second.by_trust is first.by_trust
    assert second.node("b") is views["b"]
    charged = dataclasses.replace(views["c"], cpu_allocated=900)
    assert cache.snapshot({"c": charged}).node("c") is charged
    assert cache.snapshot().node("c") is views["c"]
    pnodes["a"] = stored("a", version=2, valid=500)
    third = cache.snapshot() if cache.views(pnodes, changed={"a"}) else None
    assert third is not None
    assert third.by_trust is not first.by_trust
    assert third.by_trust[0] == third.by_name["a"]
