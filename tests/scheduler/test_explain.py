"""What users read: the unschedulable message and the explanation's JSON form."""

from __future__ import annotations

import json

import pytest

from scheduler import config, explain, model, placement
from tests.scheduler import helpers


@pytest.mark.parametrize(
    ("pnodes", "reasons", "expected"),
    [
        (
            12,
            {"lack accelerator a100": 5, "insufficient memory": 7},
            "0/12 pnodes available: 7 insufficient memory, 5 lack accelerator a100",
        ),
        # Equal counts: alphabetical, so the message is stable.
        (
            4,
            {"not ready": 2, "cordoned": 2},
            "0/4 pnodes available: 2 cordoned, 2 not ready",
        ),
        (1, {"host another replica": 1}, "0/1 pnodes available: 1 host another replica"),
        (0, {}, "0/0 pnodes available: no pnodes registered"),
    ],
)
def test_unschedulable_message(pnodes: int, reasons: dict[str, int], expected: str) -> None:
    assert explain.unschedulable_message(pnodes, reasons) == expected


def test_message_of_a_real_decision_counts_every_pnode() -> None:
    nodes = [helpers.node(f"m{i}", memory_capacity=helpers.MiB) for i in range(7)]
    nodes += [helpers.node(f"g{i}", memory_capacity=64 * helpers.GiB) for i in range(5)]
    req = helpers.request(memory=helpers.GiB, accelerator="a100", accelerator_count=1)
    decision = placement.place(req, model.Snapshot(nodes), seed=0)
    assert isinstance(decision, explain.Unschedulable)
    assert decision.message == (
        "0/12 pnodes available: 7 insufficient memory, 5 lack accelerator a100"
    )
    assert decision.explanation.evaluated == 12
    assert decision.explanation.feasible == 0


def test_placed_explanation_lists_scores_by_scorer() -> None:
    nodes = [
        helpers.node("busy", cpu_allocated=3000, trust=0.1),
        helpers.node("idle", trust=0.1),
        helpers.node("down", ready=False),
    ]
    decision = placement.place(helpers.request(cpu=1000), model.Snapshot(nodes), seed=3)
    assert isinstance(decision, explain.Placed)
    assert decision.pnode == "idle"
    why = decision.explanation
    assert (why.pnodes, why.evaluated, why.feasible, why.unlisted) == (3, 3, 2, 0)
    assert why.reasons == {"not ready": 1}
    assert why.scorers == (
        "least_allocated",
        "data_locality",
        "graph_affinity",
        "operator_spread",
        "reliability",
        "trust",
    )
    assert sum(why.weights) == pytest.approx(1.0)
    assert [(v.pnode, v.reason) for v in why.verdicts] == [
        ("idle", None),
        ("busy", None),
        ("down", "not ready"),
    ]
    best = why.scores_of(why.verdicts[0])
    assert best["least_allocated"] == pytest.approx((0.75 + 15 / 16) / 2)
    assert best["reliability"] == 1.0
    assert why.verdicts[0].total == decision.score
    assert decision.score == pytest.approx(
        sum(w * s for w, s in zip(why.weights, why.verdicts[0].scores, strict=True))
    )

    as_json = json.loads(json.dumps(why.to_dict()))
    assert as_json["reasons"] == {"not ready": 1}
    assert as_json["verdicts"][0]["pnode"] == "idle"
    assert set(as_json["verdicts"][0]["scores"]) == set(why.scorers)
    assert as_json["verdicts"][2] == {
        "pnode": "down",
        "reason": "not ready",
        "scores": {},
        "total": None,
    }


def test_explanation_lists_a_bounded_number_of_verdicts() -> None:
    nodes = [helpers.node(f"full{i:02d}", cpu_allocated=4000) for i in range(40)]
    nodes += [helpers.node(f"free{i:02d}") for i in range(30)]
    cfg = config.Config(max_explained_rejections=5, max_explained_scores=3)
    decision = placement.place(helpers.request(), model.Snapshot(nodes), seed=1, config=cfg)
    assert isinstance(decision, explain.Placed)
    why = decision.explanation
    scored = [v for v in why.verdicts if v.reason is None]
    rejected = [v for v in why.verdicts if v.reason is not None]
    assert len(scored) == 3
    assert scored[0].pnode == decision.pnode
    totals = [v.total or 0.0 for v in scored]
    assert totals == sorted(totals, reverse=True)
    assert len(rejected) == min(5, why.reasons.get("insufficient cpu", 0))
    assert why.unlisted == why.evaluated - len(why.verdicts)
    assert why.evaluated == why.feasible + sum(why.reasons.values())
