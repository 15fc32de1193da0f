"""Invariants of placement over generated clusters and batches (hypothesis).

Each property is checked against an independent oracle built from `filters.hard` and plain
arithmetic, never against the placer's own bookkeeping.
"""

from __future__ import annotations

import collections
import dataclasses
import random

from hypothesis import given, settings
from hypothesis import strategies as st

from scheduler import config, explain, filters, model, placement

PROPERTY = settings(max_examples=120, derandomize=True, deadline=None)
ACCELERATORS = ("a100", "t4")
FLOOR = 0.5
CONFIG = config.Config(trust_floor=FLOOR, sample_size=3)


@st.composite
def nodes(draw: st.DrawFn, *, name: str) -> model.NodeView:
    healthy = draw(st.booleans()) or draw(st.booleans())
    cpu = draw(st.sampled_from([0, 500, 1000, 2000, 4000]))
    memory = draw(st.sampled_from([0, 1, 2, 4, 8]))
    kind = draw(st.sampled_from([None, *ACCELERATORS]))
    gpus = draw(st.integers(1, 4)) if kind else 0
    return model.NodeView(
        name=name,
        ready=healthy or draw(st.booleans()),
        schedulable=healthy or draw(st.booleans()),
        draining=not healthy and draw(st.booleans()),
        bugged=not healthy and draw(st.booleans()),
        cpu_capacity=cpu,
        memory_capacity=memory,
        accelerators=((kind, gpus),) if kind else (),
        cpu_allocated=draw(st.integers(0, cpu)),
        memory_allocated=draw(st.integers(0, memory)),
        accelerators_allocated=((kind, draw(st.integers(0, gpus))),) if kind else (),
        trust=draw(st.sampled_from([0.0, 0.3, 0.6, 0.9])),
        missed_heartbeats=draw(st.integers(0, 3)),
        evictions=draw(st.integers(0, 2)),
        datasets=draw(st.sampled_from([frozenset(), frozenset({"mnist"})])),
    )


@st.composite
def snapshots(draw: st.DrawFn, *, max_size: int = 10) -> model.Snapshot:
    count = draw(st.integers(0, max_size))
    return model.Snapshot(draw(nodes(name=f"p{i}")) for i in range(count))


@st.composite
def shapes(draw: st.DrawFn) -> dict[str, object]:
    kind = draw(st.sampled_from([None, None, *ACCELERATORS]))
    return {
        "cpu": draw(st.sampled_from([0, 250, 500, 1000, 3000])),
        "memory": draw(st.integers(0, 4)),
        "accelerator": kind,
        "accelerator_count": draw(st.integers(1, 2)) if kind else 0,
        "critical": draw(st.booleans()),
        "dataset": draw(st.sampled_from([None, "mnist"])),
    }


@st.composite
def batches(draw: st.DrawFn, snapshot: model.Snapshot) -> list[model.Request]:
    names = sorted(n.name for n in snapshot.nodes)
    some_nodes = (
        st.frozensets(st.sampled_from(names), max_size=3) if names else st.just(frozenset())
    )
    out: list[model.Request] = []
    # Few distinct shapes per batch, as in real networks (many layers of one size).
    palette = draw(st.lists(shapes(), min_size=1, max_size=3))
    for v in range(draw(st.integers(0, 6))):
        shape = draw(st.sampled_from(palette))
        avoid = draw(some_nodes)
        near = draw(some_nodes)
        replicas = draw(st.integers(1, 3))
        out.extend(
            model.Request(network="net", vnode=f"v{v}", replica=r, avoid=avoid, near=near, **shape)  # type: ignore[arg-type]
            for r in range(replicas)
        )
    return out


@st.composite
def cases(draw: st.DrawFn) -> tuple[model.Snapshot, list[model.Request], int]:
    snapshot = draw(snapshots())
    return snapshot, draw(batches(snapshot)), draw(st.integers(0, 2**32))


def used(node: model.NodeView, kind: str) -> int:
    return model.count(node.accelerators_allocated, kind)


@PROPERTY
@given(cases())
def test_place_all_never_overcommits_a_node(case) -> None:
    snapshot, requests, seed = case
    plan = placement.place_all(requests, snapshot, seed=seed, config=CONFIG)
    cpu, memory = collections.Counter[str](), collections.Counter[str]()
    gpus = collections.Counter[tuple[str, str]]()
    for entry in plan.entries:
        if isinstance(entry.decision, explain.Placed):
            on, req = entry.decision.pnode, entry.request
            cpu[on] += req.cpu
            memory[on] += req.memory
            if req.accelerator:
                gpus[on, req.accelerator] += req.accelerator_count
    for node in snapshot.nodes:
        assert node.cpu_allocated + cpu[node.name] <= node.cpu_capacity
        assert node.memory_allocated + memory[node.name] <= node.memory_capacity
        for kind in ACCELERATORS:
            assert used(node, kind) + gpus[node.name, kind] <= model.count(node.accelerators, kind)


@PROPERTY
@given(cases())
def test_replicas_of_a_vnode_land_on_distinct_allowed_nodes(case) -> None:
    snapshot, requests, seed = case
    plan = placement.place_all(requests, snapshot, seed=seed, config=CONFIG)
    hosts = collections.defaultdict[str, list[str]](list)
    for entry in plan.entries:
        if isinstance(entry.decision, explain.Placed):
            assert entry.decision.pnode not in entry.request.avoid
            hosts[entry.request.vnode].append(entry.decision.pnode)
    for placed_on in hosts.values():
        assert len(placed_on) == len(set(placed_on))


@PROPERTY
@given(cases())
def test_same_inputs_and_seed_give_the_same_plan_in_any_input_order(case) -> None:
    snapshot, requests, seed = case
    plan = placement.place_all(requests, snapshot, seed=seed, config=CONFIG)
    assert plan == placement.place_all(requests, snapshot, seed=seed, config=CONFIG)
    shuffled = list(requests)
    random.Random(seed).shuffle(shuffled)
    rebuilt = model.Snapshot(reversed(snapshot.nodes))
    assert plan == placement.place_all(shuffled, rebuilt, seed=seed, config=CONFIG)


@PROPERTY
@given(cases())
def test_every_decision_agrees_with_an_exhaustive_check(case) -> None:
    """Replaying the plan: placed on a feasible node, unschedulable only if none was.

    Also the soft trust floor: a critical request lands at or above the floor whenever a
    feasible node there exists, and otherwise says it fell back.
    """
    snapshot, requests, seed = case
    plan = placement.place_all(requests, snapshot, seed=seed, config=CONFIG)
    views = {n.name: n for n in snapshot.nodes}
    siblings = collections.defaultdict[str, set[str]](set)
    for entry in plan.entries:
        req = dataclasses.replace(
            entry.request, avoid=entry.request.avoid | siblings[entry.request.vnode]
        )
        feasible = [n for n in views.values() if filters.hard(req, n) is None]
        decision = entry.decision
        if isinstance(decision, explain.Unschedulable):
            assert feasible == []
            first_failures = collections.Counter(filters.hard(req, n) for n in views.values())
            assert decision.reasons == first_failures
            continue
        chosen = views[decision.pnode]
        assert chosen in feasible
        if req.critical and any(n.trust >= FLOOR for n in feasible):
            assert chosen.trust >= FLOOR
        elif req.critical and any(n.trust > 0 for n in feasible):
            assert chosen.trust > 0, "earned trust goes before none (issue 11)"
            assert decision.explanation.notes
        elif req.critical:
            assert decision.explanation.notes, "fallback below the floor must be explained"
        views[chosen.name] = chosen.with_allocation(req)
        siblings[req.vnode].add(chosen.name)


@PROPERTY
@given(snapshots(max_size=30), shapes(), st.integers(0, 2**32), st.data())
def test_a_feasible_request_is_always_placed(snapshot, shape, seed, data) -> None:
    """Add one node that passes every hard filter (anywhere in the name order): Placed."""
    spare = model.NodeView(
        name=data.draw(st.sampled_from(["a-spare", "p5-spare", "z-spare"])),
        cpu_capacity=shape["cpu"],
        memory_capacity=shape["memory"],
        accelerators=((shape["accelerator"], shape["accelerator_count"]),)
        if shape["accelerator"]
        else (),
        trust=data.draw(st.sampled_from([0.0, 0.9])),
    )
    cluster = model.Snapshot([*snapshot.nodes, spare])
    avoid = frozenset(n.name for n in snapshot.nodes if data.draw(st.booleans()))
    req = model.Request(network="net", vnode="v", avoid=avoid, **shape)
    decision = placement.place(req, cluster, seed=seed, config=CONFIG)
    assert isinstance(decision, explain.Placed)
    assert filters.hard(req, cluster.node(decision.pnode)) is None  # type: ignore[arg-type]


@PROPERTY
@given(snapshots(), shapes(), st.integers(0, 2**32))
def test_trust_floor_falls_back_when_no_trusted_node_is_feasible(snapshot, shape, seed) -> None:
    untrusted = model.Snapshot(
        dataclasses.replace(n, trust=min(n.trust, 0.3)) for n in snapshot.nodes
    )
    req = model.Request(network="net", vnode="v", **{**shape, "critical": True})
    decision = placement.place(req, untrusted, seed=seed, config=CONFIG)
    feasible = [n for n in untrusted.nodes if filters.hard(req, n) is None]
    assert isinstance(decision, explain.Placed) == bool(feasible)
    if isinstance(decision, explain.Placed):
        chosen = untrusted.node(decision.pnode)
        assert chosen is not None
        if any(n.trust > 0 for n in feasible):
            assert chosen.trust > 0
            assert decision.explanation.notes[-1].endswith(
                "; considered pnodes with earned trust"
            ) or all(n.trust > 0 for n in untrusted.nodes)
        else:
            assert decision.explanation.notes[-1].endswith("; considered all pnodes")
        assert decision.explanation.notes[0].startswith("critical: no pnode has trust >= floor 0.5")


@PROPERTY
@given(snapshots(max_size=30), shapes(), st.integers(0, 2**32), st.integers(1, 4), st.data())
def test_a_smaller_ordinary_sample_is_a_prefix_of_the_full_one(
    snapshot, shape, seed, limit, data
) -> None:
    """Issue 13's limit on an ordinary request's sample may only cost quality when the full
    sample's winner was drawn late: the limited draw is a prefix of the full one (same
    seed), so it picks the same PNode whenever it drew that PNode, and never scores higher.
    """
    names = sorted(n.name for n in snapshot.nodes)
    near = data.draw(st.frozensets(st.sampled_from(names), max_size=2)) if names else frozenset()
    req = model.Request(network="net", vnode="v", near=near, **{**shape, "critical": False})
    full = config.Config(sample_size=8, ordinary_sample_size=8)
    limited = config.Config(sample_size=8, ordinary_sample_size=limit)
    best = placement.place(req, snapshot, seed=seed, config=full)
    chosen = placement.place(req, snapshot, seed=seed, config=limited)
    assert type(best) is type(chosen)  # a limit never makes a feasible request unschedulable
    if not isinstance(best, explain.Placed):
        return
    assert isinstance(chosen, explain.Placed)
    sample = [v.pnode for v in chosen.explanation.verdicts if v.reason is None]
    assert len(sample) == min(limit, best.explanation.feasible)
    assert chosen.score <= best.score
    if best.pnode in sample:
        assert chosen.pnode == best.pnode
