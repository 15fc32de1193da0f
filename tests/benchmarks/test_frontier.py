"""The validation frontier's model and report (`benchmarks.frontier`), at a small size: the
invariants the benchmark reports must hold in every run, not only on average.

- No honest PNode is ever struck when replicas are spread over operators, whatever the
  liars do (colluding included), under either scheme.
- Checking every result (floor 1) lets no lie reach a caller, even from colluders.
- A liar lying on every result is Bugged within strike_limit - 1 lies plus the results of
  one request (outcomes are applied per request), under our scheme.
- Runs are reproducible from their seed; the report and the README splice keep their shape.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from benchmarks import frontier
from benchmarks import frontier_model as model

SMALL = model.World(requests=300)
SEEDS = range(4)
SPREAD = [m for m in frontier.MODELS if m.placement == "spread"]


@pytest.mark.parametrize("liars", SPREAD, ids=[m.name for m in SPREAD])
@pytest.mark.parametrize("scheme", ["ours", "boinc"])
def test_no_honest_pnode_is_struck_under_spread_placement(liars: model.Liars, scheme: str) -> None:
    rule = model.ours(0.05) if scheme == "ours" else model.boinc()
    for seed in SEEDS:
        run = model.simulate(rule, liars, SMALL, seed)
        assert run.honest_strikes == 0, f"{liars.name}, seed {seed}"


@pytest.mark.parametrize("liars", SPREAD, ids=[m.name for m in SPREAD])
def test_checking_every_result_lets_no_lie_through(liars: model.Liars) -> None:
    liars = dataclasses.replace(liars, patience=min(liars.patience, 20))  # lies within the run
    for seed in SEEDS:
        run = model.simulate(model.ours(1.0), liars, SMALL, seed)
        assert run.wrong == 0.0, f"{liars.name}, seed {seed}: {run}"
        assert run.extra >= 1.0
    assert run.lies > 0, "the liars never lied: the test proves nothing"


def test_a_liar_on_every_result_is_bugged_within_a_bound() -> None:
    liars = model.Liars("always", 1.0)
    bound = model.TRUST.strike_limit - 1 + SMALL.results_per_request
    for seed in SEEDS:
        run = model.simulate(model.ours(0.1), liars, SMALL, seed)
        assert len(run.lies_before_bugged) == SMALL.liars
        assert not run.lies_unbugged
        assert max(run.lies_before_bugged) <= bound, run.lies_before_bugged


def test_runs_are_seeded() -> None:
    liars = frontier.MODELS[0]
    a, b = (model.simulate(model.ours(0.1), liars, SMALL, 7) for _ in range(2))
    assert a == b
    assert model.simulate(model.ours(0.1), liars, SMALL, 8) != a


def test_interpolation_and_headline() -> None:
    e = frontier.Estimate

    def point(scheme: str, setting: float, extra: float, wrong: float) -> frontier.Point:
        return frontier.Point(scheme, setting, e(extra, 0.001), e(wrong, 0.001), 0, (), ())

    boinc = [point("boinc", 10, 0.04, 0.02), point("boinc", 100, 0.20, 0.01)]
    found = frontier.interpolate(boinc, 0.12)
    assert found is not None
    assert (found.mean, found.half) == pytest.approx((0.015, 0.001))
    assert frontier.interpolate(boinc, 0.30) is None
    ours = [point("ours", 0.1, 0.12, 0.001), point("ours", 0.2, 0.22, 0.0)]
    verdict = frontier.headline([*ours, *boinc])
    assert verdict is not None
    assert (verdict.ours.setting, verdict.sweep) == (0.1, "boinc")
    assert verdict.ratio == pytest.approx(0.001 / 0.015)
    assert verdict.met
    worse = frontier.headline([point("ours", 0.1, 0.12, 0.005), *boinc])
    assert worse is not None
    assert not worse.met


def test_report_and_readme_splice(tmp_path: Path) -> None:
    results = {m.name: frontier.measure(m, 2, model.World(requests=20)) for m in frontier.MODELS}
    lines = frontier.report(results, seeds=2, seconds=1.0, plot=None)
    assert lines[0].startswith("## Validation frontier")
    assert all(name in "\n".join(lines) for name in results)
    readme = tmp_path / "README.md"
    readme.write_text("# Benchmarks\n\nfigures\n\n## Chaos soak (`make soak`)\n\nverdicts\n")
    frontier.splice(readme, lines)
    frontier.splice(readme, [*lines[:3], "replaced"])
    text = readme.read_text()
    assert text.count("## Validation frontier") == 1
    assert "replaced" in text
    assert text.index("## Validation frontier") < text.index("## Chaos soak")
    assert text.startswith("# Benchmarks\n\nfigures\n")
    assert text.endswith("verdicts\n")


def test_spot_checks_cost_less_and_change_no_outcome() -> None:
    """A spot check that pays is cheaper than a replica and decides the same votes: on the
    same seed the same answers are wrong, for less compute; a VNode whose check does not
    pay (check == compute) costs a replica either way."""
    costs = (model.VNodeCost("fc", 10.0, 1.0), model.VNodeCost("act", 1.0, 1.0))
    world = model.World(requests=300, costs=costs)
    liars = model.Liars("10% slight", 0.10)
    for seed in range(3):
        spot = model.simulate(model.ours(0.5), liars, world, seed, spot=True)
        full = model.simulate(model.ours(0.5), liars, world, seed)
        assert (spot.wrong, spot.lies, spot.honest_strikes) == (
            full.wrong, full.lies, full.honest_strikes,
        )  # fmt: skip
        assert spot.extra < full.extra
    pays_not = model.World(requests=300, costs=(model.VNodeCost("act", 1.0, 1.0),) * 2)
    assert model.simulate(model.ours(0.5), liars, pays_not, 1, spot=True) == model.simulate(
        model.ours(0.5), liars, pays_not, 1
    )


def test_saved_figures_render_the_same_report(tmp_path: Path) -> None:
    costs = (model.VNodeCost("fc", 10.0, 1.0), model.VNodeCost("act", 1.0, 1.0))
    world = model.World(requests=20, costs=costs)
    results = {m.name: frontier.measure(m, 2, world) for m in frontier.MODELS[:2]}
    path = tmp_path / "frontier.json"
    frontier.save(path, results, {"seeds": 2})
    loaded, meta = frontier.load(path)

    def ordered(points: list[frontier.Point]) -> list[frontier.Point]:
        return [
            dataclasses.replace(
                p,
                lies_before_bugged=tuple(sorted(p.lies_before_bugged)),
                lies_unbugged=tuple(sorted(p.lies_unbugged)),
            )
            for p in points
        ]

    assert {n: ordered(ps) for n, ps in loaded.items()} == {
        n: ordered(ps) for n, ps in results.items()
    }
    assert meta == {"seeds": 2}
    lines = frontier.report(loaded, seeds=2, seconds=1.0, plot=None, world=world)
    text = "\n".join(lines)
    assert "| fc | 10000000.0 | - | 1000000.0 | 0.100 |" in text, "the costs table"
    assert "Verdict on the criterion" in text
    assert all(f"- {name}: " in text for name in frontier.HEADLINE)
