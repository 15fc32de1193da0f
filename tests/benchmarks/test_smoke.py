"""The benchmark harness cannot rot: every scenario runs at a tiny size in a subprocess (as
`make bench` runs them) into a temporary results directory, and each leaves its JSON with
baseline and measured figures from the same run. No time is asserted: the numbers of a smoke
run mean nothing, only their presence and shape do.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import __main__ as bench

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(330)
def test_every_scenario_leaves_baseline_and_measured_figures(tmp_path: Path) -> None:
    results = tmp_path / "results"
    run = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--smoke", "--results-dir", str(results)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=320,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert run.returncode == 0, run.stderr[-4000:]
    for name in bench.SCENARIOS:
        path = results / f"{name}.json"
        assert path.exists(), f"{name}: no results file; stderr:\n{run.stderr[-2000:]}"
        document = json.loads(path.read_text())
        assert document["scenario"] == name
        assert document["smoke"] is True
        assert document["machine"]["cores"] >= 1
        assert document["machine"]["python"]
        assert document["comparisons"], f"{name}: no figures"
        for figure in document["comparisons"]:
            for side in ("measured", "baseline"):
                stats = figure[side]
                assert stats["n"] >= 1, (name, figure["name"], side)
                assert math.isfinite(stats["p50"])
                assert stats["min"] <= stats["p50"] <= stats["max"]
            assert figure["baseline"]["name"], (name, figure["name"])
            assert figure["ratio"] is not None, (name, figure["name"])
            assert figure["ratio"] > 0, (name, figure["name"])
            assert all(t["met"] is None for t in figure["targets"]), "smoke runs judge nothing"
    readme = (results / "README.md").read_text()
    for name in bench.SCENARIOS:
        assert f"Scenario `{name}`" in readme
    assert "Smoke run" in readme
