"""The scale scenario judges its targets on what it measured when it ran the full size
(`make bench-scale`), and labels them as judged on an extrapolation otherwise. Pure: the
figures are given, nothing runs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from benchmarks import harness, scale


def point(
    pnodes: int, vnodes: int, *, placement: float, processing: float, rss: int
) -> dict[str, Any]:
    return {
        "pnodes": pnodes,
        "vnodes": vnodes,
        "placed": vnodes,
        "placement_seconds": placement,
        "reconverge_processing_seconds": processing,
        "reconverge_floor_seconds": 6.0,
        "peak_rss_bytes": rss,
        "lifecycle_needed_per_second": pnodes / 4,
        "lifecycle_reconciles_per_second": 1000.0,
    }


def judge(results: list[dict[str, Any]], tmp_path: Path) -> harness.Report:
    report = harness.Report(scale.NAME, "scale", {})
    scale._compare(harness.Context(smoke=False, workdir=tmp_path), report, results, 1000)
    return report


def test_the_full_size_is_judged_on_its_measurement(tmp_path: Path) -> None:
    full = point(100_000, 1_000_000, placement=590.0, processing=70.0, rss=3 * 2**30)
    report = judge([full], tmp_path)
    verdicts = {c.name.split(",")[0]: c.targets[0] for c in report.comparisons}
    assert verdicts["time to full placement"].met is True
    assert verdicts["peak RSS"].met is True
    assert verdicts["re-convergence after 10% die"].met is False  # 70 + 6 > 60
    assert all("EXTRAPOLATION" not in t.text for t in verdicts.values())
    assert "extrapolation" not in report.extra
    assert all("measured at full size" in c.note for c in report.comparisons)


def test_smaller_sizes_are_judged_on_a_labelled_extrapolation(tmp_path: Path) -> None:
    # Time per VNode grows with the PNodes (1 ms at 10,000): 10,000 s at full size.
    points = [
        point(p, 10 * p, placement=10 * p * p * 1e-7, processing=1.0, rss=p * 1000)
        for p in (1_000, 10_000)
    ]
    report = judge(points, tmp_path)
    extrapolated = report.extra["extrapolation"]
    assert abs(extrapolated["placement_seconds"] - 10_000) < 1
    placement = next(c for c in report.comparisons if c.name.startswith("time to full"))
    assert placement.targets[0].met is False
    assert "judged on the EXTRAPOLATION" in placement.targets[0].text
    assert "10,000 PNodes, 100,000 VNodes" in placement.name


def test_a_falling_fit_is_not_extrapolated_below_the_largest_point(tmp_path: Path) -> None:
    # Noise on a shared machine: the larger point happened to be cheaper per VNode.
    points = [
        point(1_000, 10_000, placement=20.0, processing=10.0, rss=10**8),
        point(10_000, 100_000, placement=100.0, processing=50.0, rss=10**9),
    ]
    extrapolated = judge(points, tmp_path).extra["extrapolation"]
    assert abs(extrapolated["placement_seconds"] - 1_000_000 * 100.0 / 100_000) < 1e-6
    assert abs(extrapolated["reconverge_seconds"] - (1_000_000 * 50.0 / 100_000 + 6.0)) < 1e-6
