"""What the pages are sent (`controller.dashboard.pages`), the job curves
(`controller.dashboard.curves`) and `dcnctl get network -o dot` (`dcnctl.dot`): pure, on
records built here."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from api.resources import event as event_model
from api.resources import job as job_model
from api.resources import meta
from api.resources import network as net_model
from controller.dashboard import curves, pages
from dcnctl import dot
from tests.controller.state.test_view import allocation_record, pnode_record

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def _network(*, replicas: int = 2, tiebreakers: tuple[str, ...] = ()) -> net_model.Network:
    return net_model.Network(
        metadata=meta.ObjectMeta(name="net"),
        spec=net_model.NetworkSpec(
            vnodes=[
                net_model.VNodeSpec(name="a", kind="input", replicas=replicas),
                net_model.VNodeSpec(name="b", kind="dense", inputs=["a"], critical=True),
            ]
        ),
        status=net_model.NetworkStatus(phase="Ready", tiebreakers=list(tiebreakers)),
    )


def _running(network: str, vnode: str, replica: int, pnode: str, epoch: int = 1):
    alloc = allocation_record(network, vnode, replica, pnode, epoch=epoch)
    alloc.status.phase = "Running"
    return alloc


def test_network_graph_has_one_node_per_replica_slot_and_edges_between_replicas() -> None:
    net = _network(replicas=2, tiebreakers=("b",))  # b runs 1 + a tiebreaker
    held = [_running("net", "a", 0, "p1"), _running("net", "a", 1, "p2", epoch=3),
            _running("net", "b", 0, "p3"), _running("net", "a", 2, "p4")]  # fmt: skip
    graph = pages.network_graph(net, held, is_live=lambda name: name != "p3")
    nodes = {n["id"]: n for n in graph["nodes"]}
    # a#2 is past the two replicas wanted: still drawn while it is stopped.
    assert list(nodes) == ["a#0", "a#1", "a#2", "b#0", "b#1"]
    assert (nodes["a#1"]["pnode"], nodes["a#1"]["epoch"]) == ("p2", 3)
    assert nodes["b#0"]["phase"] == "PNodeDown"  # Running, but its lease ran out
    assert nodes["b#1"]["phase"] == pages.UNPLACED
    assert nodes["b#1"]["tiebreaker"]
    assert not nodes["b#0"]["tiebreaker"]
    assert nodes["b#0"]["critical"]
    assert {(e["source"], e["target"]) for e in graph["edges"]} == {
        (a, b) for a in ("a#0", "a#1", "a#2") for b in ("b#0", "b#1")
    }
    assert graph["network"]["desired"] == net.slot_count() == 4


def test_overview_counts_phases_bugged_and_cordoned() -> None:
    ready, lost, bugged, cordoned = (pnode_record(n) for n in ("r", "l", "b", "c"))
    lost.status.phase = "Lost"
    bugged.status.trust.bugged = True
    cordoned.spec.unschedulable = True
    jobs = [
        job_model.Job(
            metadata=meta.ObjectMeta(name=name, creation_timestamp=T0 + timedelta(seconds=s)),
            spec=job_model.JobSpec(network="net"),
        )
        for name, s in (("old", 0), ("new", 5), ("also-new", 5))
    ]
    events = [
        event_model.Event(
            metadata=meta.ObjectMeta(name=f"e{i}"),
            involved_object=event_model.ObjectReference(kind="PNode", name="r"),
            reason="Registered",
            first_timestamp=T0,
            last_timestamp=T0 + timedelta(seconds=i),
            expire_time=T0 + timedelta(hours=1),
        )
        for i in range(pages.RECENT_EVENTS + 5)
    ]
    document = pages.overview(
        pnodes=[ready, lost, bugged, cordoned],
        allocations=[_running("net", "a", 0, "r"), _running("net", "a", 1, "r")],
        networks=[_network()],
        jobs=jobs,
        events=events,
        is_live=lambda name: name != "l",
    )
    assert document["counts"] == {
        "pnodes": 4, "Ready": 3, "NotReady": 0, "Lost": 1, "Bugged": 1, "Cordoned": 1,
    }  # fmt: skip
    rows = {r["name"]: r for r in document["pnodes"]}
    assert rows["r"]["allocations"] == 2
    assert not rows["l"]["live"]
    assert [j["name"] for j in document["jobs"]] == ["also-new", "new", "old"]
    assert len(document["events"]) == pages.RECENT_EVENTS
    assert document["events"][0]["last"] == (T0 + timedelta(seconds=34)).isoformat()


def _job(uid: str = "u1", **status: object) -> job_model.Job:
    return job_model.Job(
        metadata=meta.ObjectMeta(name="j", uid=uid),
        spec=job_model.JobSpec(network="net"),
        status=job_model.JobStatus.model_validate(status),
    )


def test_curves_add_a_point_only_when_progress_moved() -> None:
    kept = curves.Curves()
    assert kept.observe(_job(step=1, loss=2.0, attempt=1), 10.0)
    assert not kept.observe(_job(step=1, loss=2.0, attempt=1), 11.0)  # a re-read: no point
    assert kept.observe(_job(step=5, loss=1.0, attempt=1), 12.0)
    assert kept.observe(_job(step=3, loss=1.5, attempt=2), 13.0)  # a rollback, a new attempt
    assert [(p["t"], p["step"], p["attempt"]) for p in kept.points("j")] == [
        (10.0, 1, 1), (12.0, 5, 1), (13.0, 3, 2),
    ]  # fmt: skip
    # Deleted and created again under the same name: a new curve.
    assert kept.observe(_job(uid="u2", step=1), 14.0)
    assert [p["t"] for p in kept.points("j")] == [14.0]
    assert kept.points("absent") == []


def test_curves_are_bounded() -> None:
    kept = curves.Curves(max_points=8, max_jobs=2)
    for step in range(100):
        kept.observe(_job(step=step), float(step))
    points = kept.points("j")
    assert len(points) <= 8
    assert points[-1]["step"] == 99  # the newest kept, the older thinned
    assert [p["step"] for p in points] == sorted(p["step"] for p in points)
    for name in ("k", "l"):
        other = _job(step=1)
        other.metadata.name = name
        kept.observe(other, 200.0)
    assert kept.points("j") == []  # the least recently changed went first
    with pytest.raises(ValueError, match="max_points"):
        curves.Curves(max_points=1)


def test_dot_draws_the_same_graph() -> None:
    net = _network(replicas=2, tiebreakers=("b",))
    text = dot.network(net, [_running("net", "a", 0, "p1"), _running("net", "b", 0, "p3", 4)])
    assert text.startswith('digraph "net" {')
    assert text.rstrip().endswith("}")
    assert '"a#0" [label="a#0\\np1\\nepoch 1"' in text
    assert '"a#1" [label="a#1\\nunplaced"' in text
    assert '"b#1" [label="b#1\\nunplaced\\n(tiebreaker)"' in text
    assert "peripheries=2" in text
    assert "penwidth=3" in text  # b is critical
    edges = {line.strip() for line in text.splitlines() if "->" in line}
    assert edges == {f'"{a}" -> "{b}";' for a in ("a#0", "a#1") for b in ("b#0", "b#1")}


def test_dot_quotes_what_it_prints() -> None:
    assert dot._quote('a "b"\\c\nd') == '"a \\"b\\"\\\\c\\nd"'
