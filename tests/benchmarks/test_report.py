"""`benchmarks.report.regenerate` builds the README from the scenarios' reports and leaves
other figures kept beside them (the frontier's JSON) to their own renderer."""

from __future__ import annotations

import shutil
from pathlib import Path

from benchmarks import report

RESULTS = Path(__file__).resolve().parents[2] / "benchmarks" / "results"


def test_the_readme_is_built_from_scenario_reports_and_skips_other_json(tmp_path: Path) -> None:
    results = tmp_path / "results"
    results.mkdir()
    shutil.copy(RESULTS / "idle.json", results / "idle.json")
    (results / "frontier.json").write_text('{"seeds": 30, "results": []}')
    readme = tmp_path / "README.md"
    report.regenerate(results, readme, plots=tmp_path / "plots", smoke=False)
    text = readme.read_text()
    assert "## Idle orchestrator" in text
    assert "seeds" not in text
