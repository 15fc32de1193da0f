"""The extra-compute / wrong-answer frontier of `validation: adaptive` (issue 18):
`python -m benchmarks.frontier [--seeds N] [--report PATH] [--plot PATH]`.

For each liar model and each setting of each scheme, the mean over `--seeds` seeded runs of
`benchmarks.frontier_model.simulate` (its docstring states the model) of two figures with
their 95 % confidence intervals (mean ± 1.96 standard errors):

- extra compute: CPU seconds spent checking (spot checks, double checks, tiebreakers,
  recomputations) over the CPU seconds of the primary results, each VNode's costs measured
  first (`benchmarks.spot_cost`: its forward pass and its spot check, BLAS on one thread)
  for `--network digits` or `wide`; `--network count` counts results (each costs 1);
- wrong answers: the share of answers that reached the caller holding a lie.

The schemes, in the same harness on the same seeds: this project's per-PNode sampling
(`controller.trust.sampling`, swept by its floor) with spot checks where they pay (as
`spotCheck: auto` picks them), the same without spot checks (every check a replica), and
BOINC's 1/CV rule
(`controller.trust.adaptive`, swept by the consecutive valid results below which every
result is checked; 10 is BOINC's). At the headline point (the largest floor whose extra
compute is at most 15 %) our wrong-answer share is compared with BOINC's interpolated at the
same extra compute. Also reported per liar model: lies each liar told before it was Bugged
(and liars never Bugged within the run), and honest PNodes struck (must be 0).

Writes a markdown report (included in benchmarks/README.md by `benchmarks.report`) and one
plot. Seconds per hundred runs; no processes, no sockets: the real system's costs are in
`benchmarks.validation`.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import datetime as dt
import importlib
import itertools
import json
import math
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks import frontier_model as model
from benchmarks import spot_cost
from controller.trust import sampling

FLOORS = (0.02, 0.05, 0.1, 0.15, 0.2, 0.4, 0.6)
MIN_VALIDS = (5, 10, 40, 100, 300, 1000)
SCALES = (2.0, 4.0, 8.0, 16.0, 32.0)
#: (scheme, label, settings): ours by floor; BOINC by min_valid, or by a factor on 1/CV.
SCHEMES: tuple[tuple[str, str, tuple[float, ...]], ...] = (
    ("ours", "ours (per-PNode, floor, spot checks)", FLOORS),
    ("ours-replicas", "ours, replicas only", FLOORS),
    ("boinc", "BOINC 1/CV, min_valid swept", tuple(float(m) for m in MIN_VALIDS)),
    ("boinc-scaled", "BOINC c/CV, c swept", SCALES),
)
BUDGET = 0.15
DEFAULT_FLOOR = 0.1
WORLD = model.World()
#: Requests per run with a network's costs: about the 8,000 results of the count world.
RESULTS_PER_RUN = 8000
BOINC_SWEEPS = ("boinc", "boinc-scaled")
PATIENCE = 300

MODELS: tuple[model.Liars, ...] = (
    model.Liars("10% slight", 0.10),
    model.Liars(f"10% slight, patient ({PATIENCE} honest results first)", 0.10, patience=PATIENCE),
    model.Liars("1% slight", 0.01),
    model.Liars("100% slight", 1.0),
    model.Liars("10% gross", 0.10, detect=0.5),
    model.Liars("1% gross", 0.01, detect=0.5),
    model.Liars("100% gross", 1.0, detect=0.5),
    model.Liars("10% slight, 2 colluding, spread placement", 0.10, colluding=True),
    model.Liars(
        "10% slight, 2 colluding, random placement", 0.10, colluding=True, placement="random"
    ),
    model.Liars("10% slight, Bugged liars rejoin as new PNodes", 0.10, rejoin=True),
)
#: The models the acceptance bar is about (two of ten agents lying on 10 % of results).
HEADLINE = (MODELS[0].name, MODELS[1].name)


@dataclasses.dataclass(frozen=True, slots=True)
class Estimate:
    mean: float
    half: float  # half-width of the 95 % confidence interval

    @classmethod
    def of(cls, values: Sequence[float]) -> Estimate:
        mean = statistics.fmean(values)
        sd = statistics.stdev(values) if len(values) > 1 else 0.0
        return cls(mean, 1.96 * sd / math.sqrt(len(values)))

    def __str__(self) -> str:
        return f"{100 * self.mean:.2f} ± {100 * self.half:.2f} %"


@dataclasses.dataclass(frozen=True, slots=True)
class Point:
    scheme: str
    setting: float
    extra: Estimate
    wrong: Estimate
    honest_strikes: int
    lies_before_bugged: tuple[int, ...]
    lies_unbugged: tuple[int, ...]


def world_of(network: str) -> model.World:
    """The world of `--network`: counted results, or a network's measured CPU costs (a
    replica where its spot check does not pay, as `spotCheck: auto` decides)."""
    if network == "count":
        return WORLD
    costs = tuple(
        model.VNodeCost(
            c.name, c.compute, c.check if c.pays else c.compute, c.check if c.spot else 0.0
        )
        for c in spot_cost.measured(network)
    )
    return model.World(costs=costs, requests=RESULTS_PER_RUN // len(costs))


def measure(liars: model.Liars, seeds: int, world: model.World = WORLD) -> list[Point]:
    points = []
    for scheme, _, settings in SCHEMES:
        if scheme == "ours-replicas" and not world.costs:
            continue  # counted results: nothing is cheaper than a replica
        for setting in settings:
            rule = (
                model.ours(setting) if scheme.startswith("ours")
                else model.boinc(int(setting)) if scheme == "boinc"
                else model.boinc(scale=setting)
            )  # fmt: skip
            spot = scheme == "ours"
            runs = [model.simulate(rule, liars, world, seed, spot=spot) for seed in range(seeds)]
            points.append(
                Point(
                    scheme,
                    setting,
                    Estimate.of([r.extra for r in runs]),
                    Estimate.of([r.wrong for r in runs]),
                    sum(r.honest_strikes for r in runs),
                    tuple(x for r in runs for x in r.lies_before_bugged),
                    tuple(x for r in runs for x in r.lies_unbugged),
                )
            )
    return points


def interpolate(points: Sequence[Point], extra: float) -> Estimate | None:
    """BOINC's wrong-answer share at `extra` compute, linear between its two nearest
    settings (None outside the range it was measured over)."""
    ordered = sorted(points, key=lambda p: p.extra.mean)
    for a, b in itertools.pairwise(ordered):
        if a.extra.mean <= extra <= b.extra.mean:
            span = b.extra.mean - a.extra.mean
            t = 0.0 if span == 0 else (extra - a.extra.mean) / span
            return Estimate(
                a.wrong.mean + t * (b.wrong.mean - a.wrong.mean),
                a.wrong.half + t * (b.wrong.half - a.wrong.half),
            )
    return None


@dataclasses.dataclass(frozen=True, slots=True)
class Verdict:
    ours: Point
    #: The better of BOINC's two sweeps (the lower wrong-answer share) at our extra compute.
    boinc: Estimate | None
    sweep: str
    #: ours / BOINC at the same extra compute, and whether the difference is wider than
    #: both intervals together.
    ratio: float | None
    separated: bool
    met: bool


def headline(points: Sequence[Point]) -> Verdict | None:
    """Our largest floor within BUDGET, against BOINC at its extra compute."""
    within = [p for p in points if p.scheme == "ours" and p.extra.mean <= BUDGET]
    if not within:
        return None
    ours = max(within, key=lambda p: p.setting)
    found = [
        (e, scheme)
        for scheme in BOINC_SWEEPS
        if (e := interpolate([p for p in points if p.scheme == scheme], ours.extra.mean))
    ]
    if not found:
        return Verdict(ours, None, "", None, False, False)
    boinc, sweep = min(found, key=lambda f: f[0].mean)
    ratio = ours.wrong.mean / boinc.mean if boinc.mean > 0 else None
    separated = boinc.mean - ours.wrong.mean > ours.wrong.half + boinc.half
    met = ours.wrong.mean <= 0.01 and ours.wrong.mean * 10 <= boinc.mean and separated
    return Verdict(ours, boinc, sweep, ratio, separated, met)


def verdict(results: dict[str, list[Point]]) -> list[str]:
    """Issue 18's headline criterion, said plainly for each headline liar model: against
    BOINC at the same compute (its better sweep, as `headline` defines it) and against
    BOINC's own setting, and what spot checks bought (ours with replicas only, same floor)."""
    lines = ["Verdict on the criterion (two of ten agents lying on 10 % of their results):", ""]
    for name in HEADLINE:
        points = results.get(name)
        if points is None:
            continue
        v = headline(points)
        own = next(p for p in points if (p.scheme, p.setting) == ("boinc", 10))
        if v is None:
            lines.append(f"- {name}: no floor of ours within {BUDGET:.0%}: not met.")
            continue
        plain = next(
            (p for p in points if (p.scheme, p.setting) == ("ours-replicas", v.ours.setting)),
            None,
        )
        vs_boinc = (
            f"BOINC at the same compute ({v.sweep}) {v.boinc}"
            if v.boinc is not None
            else "BOINC's sweeps do not reach that compute"
        )
        absolute = "within" if v.ours.wrong.mean <= 0.01 else "above"
        apart_boinc = "intervals apart" if v.separated else "intervals overlapping"
        tenth = (
            f"ours is {v.ratio:.2f} of it, {apart_boinc}: "
            + ("at most the tenth asked" if v.met else "not the tenth asked")
            if v.ratio is not None
            else "not the tenth asked"
        )
        if v.boinc is not None and v.boinc.mean == 0 and not v.met:
            tenth = (
                "BOINC lets none through there (its longer warm-up checks every result of "
                "a new fleet until the liars are Bugged, within this run's length), and a "
                "tenth of zero cannot be met"
            )
        line = (
            f"- {name}: **{'met' if v.met else 'not met'}**. Ours at floor {v.ours.setting:g}: "
            f"{v.ours.wrong} wrong answers ({absolute} 1 %) for {v.ours.extra} extra compute; "
            f"{vs_boinc}: {tenth}. Against BOINC's own rule (min_valid 10: {own.extra} extra, "
            f"{own.wrong} wrong) "
        )
        if own.wrong.mean > 0:
            ratio = v.ours.wrong.mean / own.wrong.mean
            apart = own.wrong.mean - v.ours.wrong.mean > own.wrong.half + v.ours.wrong.half
            line += f"ours is {ratio:.2f} of it, intervals {'apart' if apart else 'overlapping'}"
        else:
            line += "both are at zero"
        if plain is not None:
            line += (
                f"; without spot checks the same floor costs {plain.extra} extra compute "
                f"(wrong {plain.wrong})."
            )
        else:
            line += "."
        lines.append(line)
    return lines


def save(path: Path, results: dict[str, list[Point]], meta: dict[str, object]) -> None:
    """The run's figures as JSON, so the report can be rendered again without a re-run: one
    line per point, the lies per liar as a histogram ([lies, liars] pairs)."""

    def point(p: Point) -> str:
        found = dataclasses.asdict(p)
        for key in ("lies_before_bugged", "lies_unbugged"):
            found[key] = sorted(collections.Counter(found[key]).items())
        return json.dumps(found, separators=(",", ":"))

    head = json.dumps(meta, separators=(",", ":"))
    body = ",\n".join(
        f"{json.dumps(name)}:[\n" + ",\n".join(point(p) for p in points) + "]"
        for name, points in results.items()
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(head[:-1] + ("," if meta else "") + '\n"results":{\n' + body + "}}\n")


def load(path: Path) -> tuple[dict[str, list[Point]], dict[str, Any]]:
    data = json.loads(path.read_text())
    results = {
        name: [
            Point(
                p["scheme"],
                p["setting"],
                Estimate(**p["extra"]),
                Estimate(**p["wrong"]),
                p["honest_strikes"],
                tuple(v for v, n in p["lies_before_bugged"] for _ in range(n)),
                tuple(v for v, n in p["lies_unbugged"] for _ in range(n)),
            )
            for p in points
        ]
        for name, points in data.pop("results").items()
    }
    return results, data


def _lies(values: Sequence[int]) -> str:
    if not values:
        return "-"
    ordered = sorted(values)
    p95 = ordered[min(len(ordered) - 1, math.ceil(0.95 * len(ordered)) - 1)]
    return f"median {statistics.median(ordered):g}, p95 {p95}, max {ordered[-1]}"


def report(
    results: dict[str, list[Point]],
    *,
    seeds: int,
    seconds: float,
    plot: str | None,
    world: model.World = WORLD,
    network: str = "count",
    finished: str = "",
) -> list[str]:
    """`finished`: when the run ended (UTC), said in the text."""
    w = world
    vnodes = w.results()
    if w.costs:
        what = (
            f"the `{network}` network's {len(vnodes)} computing VNodes ("
            + ", ".join(v.name for v in vnodes)
            + "), extra compute in measured CPU seconds (table below)"
        )
    else:
        what = f"{len(vnodes)} VNode results, extra compute counted in results"
    lines = [
        "## Validation frontier (`make frontier`)",
        "",
        f"Model-level simulation (`benchmarks/frontier_model.py`), {seeds} seeded runs per "
        f"point, {seconds:.0f} s on a 2-core machine shared with other engineers' tests "
        f"and benchmarks{f', finished {finished}' if finished else ''} (the simulation is "
        "seeded, so load changes only its duration and the measured CPU costs, whose check "
        "and compute rounds are interleaved so load falls on both). Each run: "
        f"{w.pnodes} PNodes of "
        f"which {w.liars} lie, {w.requests} requests of {what}, "
        "each placed on PNodes drawn at random, a new fleet (no trust at the start), Bugged "
        "liars do not come back (one model lets them rejoin under new identities). The check "
        "rate is the real `controller.trust.sampling` (ours, swept by `floor`, warm-up "
        f"{sampling.DEFAULT.warmup} valid results, suspect for a strike in the last "
        f"{sampling.DEFAULT.memory} outcomes) or the real `controller.trust.adaptive` "
        "(BOINC's 1/CV: swept by `min_valid`, 10 being BOINC's, and by a factor c on 1/CV), "
        "and every outcome goes through the real `controller.trust.book.apply` (3 strikes in "
        "50: Bugged). Figures are means with 95 % confidence intervals. Gross lies are caught "
        "by the receivers' invariant checks half the time (a model assumption); slight ones "
        "(x1.01) never.",
        "",
        "Where the scheme departs from BOINC, and why:",
        "",
        "- A floor. BOINC's rate 1/CV falls towards zero as a PNode stays right; ours never "
        "falls below `floor`. Before its first caught lie a liar is checked at its PNode's "
        "rate p, so it gets (1 - p) / p lies past unchecked on average: bounded by the floor "
        "with ours, growing with the PNode's age with BOINC's.",
        "- Suspicion instead of a reset. A strike is proof (signed results; honest PNodes are "
        "never struck), so a struck PNode is checked on every result while the strike is in "
        "its last outcomes: none of its further lies reach a caller, and it is Bugged after "
        "`strike_limit` lies. BOINC resets CV to 0 and decays again. The model strikes a "
        "liar for a disputed lie once the tiebreaker's vote settles it; the real system "
        "does too (`controller.trust.disputes`, since 2026-12-07) for a sink's disputed "
        "output whose retry settles the same inputs (every upstream VNode compared in both "
        "tries), but not yet for a dispute among a non-sink VNode's replicas or at a sink "
        "whose upstream ran unchecked: there the liar is struck only if it lies again in "
        "the retry, and the model is optimistic for both schemes alike.",
        "- Spread replicas. Modelled as: a double check never lands on the same operator as "
        "the result it checks, so two colluding liars telling the same lie never confirm "
        "each other; with random placement they sometimes do (and an honest PNode outvoted "
        "by two of them is struck). See docs/security.md for what the scheduler knows of "
        "operators.",
        "- What it cannot do: a rule that sees only a PNode's own history cannot tell a "
        "patient liar from an honest PNode before its first caught lie, so at the same extra "
        "compute both schemes check it at about the same rate until then. Against BOINC's "
        "rule swept to the same compute (a longer warm-up, or a factor on 1/CV) the gain in "
        "a run of this length is small or none (the table says how much); it is against "
        "BOINC's own setting, whose rate keeps falling as the fleet ages, that the floor "
        "pays.",
        "- Spot checks. Where a VNode's kind has a proof cheaper than recomputation (dense: "
        "Freivalds' check, `agent/runtime/spot.py`) and it pays at the layer's size, ours "
        "checks with it; BOINC's rule keeps full replicas, as BOINC does. A check that pays "
        "lets ours check more results for the same compute; kinds without one pay a replica. "
        "On small layers the check costs more than recomputing (numpy's per-call overhead: "
        "2.8x digits' 64x64x32 product), so `spotCheck: auto` leaves them to replicas: the "
        "digits network's frontier is the replicas-only one "
        "(`make frontier FRONTIER_NETWORK=digits`, benchmarks/results/frontier-digits.md).",
        "",
    ]
    if w.costs:
        lines += [
            "CPU per result, measured before the run (`benchmarks/spot_cost.py`, median of 7 "
            "rounds, BLAS on one thread, same machine and load): computing a VNode's result "
            "(what a replica's recomputation costs), its kind's spot check where it has one, "
            "and what ours spends checking it (the spot check where it pays, "
            "`api.kinds.spot_pays`, else a replica's recomputation).",
            "",
            "| VNode | compute (µs) | spot check (µs) | ours' check (µs) | check / compute |",
            "|---|---|---|---|---|",
            *(
                f"| {v.name} | {1e6 * v.compute:.1f} | "
                f"{f'{1e6 * v.spot_check:.1f}' if v.spot_check else '-'} | "
                f"{1e6 * v.check:.1f} | {v.check / v.compute:.3f} |"
                for v in vnodes
            ),
            f"| all | {1e6 * sum(v.compute for v in vnodes):.1f} | | "
            f"{1e6 * sum(v.check for v in vnodes):.1f} | "
            f"{sum(v.check for v in vnodes) / sum(v.compute for v in vnodes):.3f} |",
            "",
        ]
    if plot:
        lines += [f"![validation frontier]({plot})", ""]
    lines += [
        f"Headline: ours at the largest floor within {BUDGET:.0%} extra compute, against "
        "BOINC's rule interpolated to the same extra compute (same run, same seeds).",
        "",
        "| liars (2 of 10) | ours: floor | extra compute | wrong answers | BOINC at the same "
        "compute (its better sweep) | ours / BOINC | ≤ 1/10 and ≤ 1 %, intervals apart | "
        "BOINC's own rule (min_valid 10): extra / wrong |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, points in results.items():
        v = headline(points)
        own = next(p for p in points if (p.scheme, p.setting) == ("boinc", 10))
        own_cell = f"{own.extra} / {own.wrong}"
        if v is None:
            lines.append(f"| {name} | - | no floor within budget | - | - | - | - | {own_cell} |")
            continue
        boinc = f"{v.boinc} ({v.sweep})" if v.boinc is not None else "out of BOINC's range"
        ratio = f"{v.ratio:.2f}" if v.ratio is not None else "-"
        lines.append(
            f"| {name} | {v.ours.setting:g} | {v.ours.extra} | {v.ours.wrong} | {boinc} | "
            f"{ratio} | {'met' if v.met else 'not met'} | {own_cell} |"
        )
    lines += ["", *verdict(results), ""]
    lines += [
        "",
        f"Liars Bugged, at our default floor ({DEFAULT_FLOOR:g}) and at BOINC's own rule "
        "(`min_valid` 10), over all runs: lies each liar told before it was Bugged, liars "
        "still free at the end of a run (with the lies they had told), honest PNodes struck.",
        "",
        "| liars | scheme | lies before Bugged | never Bugged (lies told) | honest struck |",
        "|---|---|---|---|---|",
    ]
    for name, points in results.items():
        for p in points:
            if (p.scheme, p.setting) in (("ours", DEFAULT_FLOOR), ("boinc", 10)):
                free = f"{len(p.lies_unbugged)} ({_lies(p.lies_unbugged)})"
                lines.append(
                    f"| {name} | {p.scheme} | {_lies(p.lies_before_bugged)} | {free} | "
                    f"{p.honest_strikes} |"
                )
    lines += [
        "",
        "Every point, as setting: extra compute / wrong answers (both in %, wrong with its "
        "95 % interval). Settings: ours by floor, `boinc` by min_valid, `boinc-scaled` by c.",
        "",
        "| liars | scheme | points |",
        "|---|---|---|",
    ]
    for name, points in results.items():
        for scheme, _, _ in SCHEMES:
            cells = "; ".join(
                f"{p.setting:g}: {100 * p.extra.mean:.1f} / {100 * p.wrong.mean:.2f} ± "
                f"{100 * p.wrong.half:.2f}"
                for p in points if p.scheme == scheme
            )  # fmt: skip
            lines.append(f"| {name} | {scheme} | {cells} |")
    return lines


def draw(results: dict[str, list[Point]], path: Path) -> None:
    matplotlib = importlib.import_module("matplotlib")  # bench-only dependency
    matplotlib.use("Agg")
    pyplot = importlib.import_module("matplotlib.pyplot")
    ticker = importlib.import_module("matplotlib.ticker")
    names = [m.name for m in (MODELS[0], MODELS[1], MODELS[2], MODELS[4], MODELS[7], MODELS[9])]
    figure, grid = pyplot.subplots(2, 3, figsize=(15, 8.5))
    for axes, name in zip(grid.flat, names, strict=False):
        for (scheme, label, _), marker in zip(SCHEMES, "oDs^", strict=True):
            pts = sorted(
                (p for p in results[name] if p.scheme == scheme), key=lambda p: p.extra.mean
            )
            if not pts:
                continue
            axes.errorbar(
                [100 * p.extra.mean for p in pts],
                [100 * p.wrong.mean for p in pts],
                xerr=[100 * p.extra.half for p in pts],
                # A share is never negative: the interval is cut at 0.
                yerr=[
                    [100 * min(p.wrong.half, p.wrong.mean) for p in pts],
                    [100 * p.wrong.half for p in pts],
                ],
                marker=marker, capsize=3, label=label,
            )  # fmt: skip
        axes.axvline(100 * BUDGET, color="grey", linestyle="--", linewidth=0.8)
        axes.set_title(name, fontsize=9)
        axes.set_xlabel("extra compute (%)")
        axes.set_ylabel("wrong answers (%)")
        axes.set_xscale("log")
        axes.set_xticks([2, 5, 10, 15, 20, 50])
        axes.xaxis.set_major_formatter(ticker.FormatStrFormatter("%g"))
        axes.xaxis.set_minor_formatter(ticker.NullFormatter())
        axes.set_yscale("symlog", linthresh=0.01)
        axes.set_ylim(bottom=0)
        axes.grid(alpha=0.3)
        axes.legend(fontsize=8)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=90)
    pyplot.close(figure)


def splice(readme: Path, lines: list[str]) -> None:
    """Replace the frontier section of `readme` (from its heading to the next "## "), or
    put it before the chaos soak's section (where `benchmarks.report` puts it), or at the
    end. Only this section changes: the other scenarios' figures and plots stay as run."""
    old = readme.read_text().splitlines()
    heading = lines[0]
    if heading in old:
        start = old.index(heading)
        end = next((i for i in range(start + 1, len(old)) if old[i].startswith("## ")), len(old))
    else:
        start = end = next(
            (i for i, x in enumerate(old) if x.startswith("## Chaos soak")), len(old)
        )
    new = [*old[:start], *lines, *([""] if end < len(old) else []), *old[end:]]
    readme.write_text("\n".join(new).rstrip() + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.frontier", description=__doc__)
    parser.add_argument("--seeds", type=int, default=40, help="seeded runs per point")
    parser.add_argument(
        "--network", choices=("count", "digits", "wide"), default="count",
        help="whose measured CPU costs (count: every result costs 1)",
    )  # fmt: skip
    parser.add_argument("--report", type=Path, default=None, help="markdown report to write")
    parser.add_argument("--plot", type=Path, default=None, help="PNG plot to write")
    parser.add_argument(
        "--readme", type=Path, default=None,
        help="README whose frontier section to replace (the rest is left as it is)",
    )  # fmt: skip
    parser.add_argument(
        "--json", type=Path, default=None,
        help="where to write the run's figures (with --render: where to read them from)",
    )  # fmt: skip
    parser.add_argument(
        "--render", action="store_true",
        help="no run: render the report, plot and README section again from --json",
    )  # fmt: skip
    args = parser.parse_args(argv)
    if args.seeds < 2:
        parser.error(f"--seeds: {args.seeds} must be at least 2 (an interval needs two runs)")
    if args.render:
        if args.json is None:
            parser.error("--render: needs --json, the figures of an earlier run")
        results, meta = load(args.json)
        world = model.World(
            **{
                **meta["world"],
                "costs": tuple(model.VNodeCost(**c) for c in meta["world"]["costs"]),
            }
        )
        args.seeds, args.network, seconds = meta["seeds"], meta["network"], meta["seconds"]
        finished = str(meta.get("finished", ""))
    else:
        t0 = time.perf_counter()
        world = world_of(args.network)
        results = {}
        for liars in MODELS:
            results[liars.name] = measure(liars, args.seeds, world)
            print(f"{liars.name}: done at {time.perf_counter() - t0:.0f} s", file=sys.stderr)
        seconds = time.perf_counter() - t0
        finished = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
        if args.json is not None:
            meta_out: dict[str, object] = {
                "seeds": args.seeds,
                "network": args.network,
                "seconds": seconds,
                "finished": finished,
                "world": dataclasses.asdict(world),
            }
            save(args.json, results, meta_out)
    plot_ref: str | None = None
    if args.plot is not None:
        draw(results, args.plot)
        plot_ref = f"plots/{args.plot.name}"
    lines = report(
        results,
        seeds=args.seeds,
        seconds=seconds,
        plot=plot_ref,
        world=world,
        network=args.network,
        finished=finished,
    )
    text = "\n".join(lines) + "\n"
    if args.report is not None:
        args.report.parent.mkdir(parents=True, exist_ok=True)
        args.report.write_text(text)
    if args.readme is not None:
        splice(args.readme, lines)
    print(text)
    failed = [n for n in HEADLINE if not ((v := headline(results[n])) and v.met)]
    honest = sum(p.honest_strikes for n, ps in results.items() for p in ps if "random" not in n)
    if honest:
        print(f"honest PNodes struck under spread placement: {honest}", file=sys.stderr)
    return 1 if failed or honest else 0


if __name__ == "__main__":
    sys.exit(main())
