"""The chaos soak (`make soak`, benchmarks/soak.py) cannot rot: a short run of it, as its own
process, with a fixed seed whose first faults are a store stall, an agent SIGKILL, a
replica SIGKILL and a replica SIGSTOP (seed 15 on 2 replicas and 3 agents), against a moto
server, 2 `serve` replicas, 3 agents and the digits network trained for one epoch, once
undisturbed and then run after run under the faults. Every invariant the soak judges must hold, each
assertion naming the evidence the report gave."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SEED = 15

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def outcome(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    root = tmp_path_factory.mktemp("soak")
    report, verdicts = root / "report.md", root / "verdicts.json"
    run = subprocess.run(
        [
            sys.executable, "-m", "benchmarks.soak", "--seed", str(SEED), "--duration", "45s",
            "--replicas", "2", "--agents", "3", "--networks", "1", "--epochs", "1",
            "--training-timeout", "90s", "--report", str(report), "--json", str(verdicts),
            "--workdir", str(root / "work"),
        ],
        cwd=REPO, capture_output=True, text=True, timeout=420, check=False,
    )  # fmt: skip
    assert verdicts.exists(), f"no verdicts (exit {run.returncode}):\n{run.stdout[-3000:]}"
    found: dict[str, object] = json.loads(verdicts.read_text())
    found["exit"] = run.returncode
    found["report"] = report.read_text()
    found["stdout"] = run.stdout
    return found


def verdict(outcome: dict[str, object], prefix: str) -> dict[str, object]:
    verdicts = outcome["verdicts"]
    assert isinstance(verdicts, list)
    return next(v for v in verdicts if str(v["name"]).startswith(prefix))


def test_the_soak_ran_its_faults_and_wrote_a_report(outcome: dict[str, object]) -> None:
    assert outcome["aborted"] == "", outcome["stdout"]
    faults = outcome["faults"]
    assert isinstance(faults, int)
    assert faults >= 3, outcome["stdout"]
    report = str(outcome["report"])
    for part in ("## Verdicts", "## Fault log", "## Re-convergence after each fault"):
        assert part in report
    assert "SIGSTOP the store" in report


@pytest.mark.parametrize(
    "invariant",
    [
        "capacity never over-committed",
        "one PNode per (slot, epoch)",
        "epochs never go backwards",
        "no expired endpoint resolved",
        "no allocation Pending on a Ready PNode",
        "allocations on dead PNodes move",
        "re-convergence after each fault",
        "running agents stay Ready",
        "no process exits unless killed",
        "training accuracy within 1 point",
    ],
)
def test_invariant_holds(outcome: dict[str, object], invariant: str) -> None:
    v = verdict(outcome, invariant)
    assert v["holds"] is True, f"{v['name']}: {v['summary']}\n" + "\n".join(
        map(str, v["evidence"])  # type: ignore[call-overload]
    )


def test_the_exit_status_says_whether_every_invariant_held(outcome: dict[str, object]) -> None:
    verdicts = outcome["verdicts"]
    assert isinstance(verdicts, list)
    failed = any(v["holds"] is False for v in verdicts)
    assert outcome["exit"] == (1 if failed else 0)
