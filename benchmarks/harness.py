"""What a scenario reports, and how: samples summarised, compared, checked and written.

A scenario returns a `Report`: its parameters, a list of `Comparison`s (a measured figure
beside its baseline from the same run, with the issue's target and whether it was met),
free-form notes, a profile when a target was missed, and optional curves for plots. The
harness adds the machine's description and writes it as JSON; `benchmarks.report` turns the
JSON files into the README, so the README is always regenerable from committed results.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
SCHEMA = 1


@dataclasses.dataclass(frozen=True, slots=True)
class Stats:
    """A summary of repeated measurements; p90/p99 only where n makes them meaningful."""

    n: int
    p50: float
    mean: float
    min: float
    max: float
    p90: float | None = None
    p99: float | None = None

    @classmethod
    def of(cls, samples: Sequence[float]) -> Stats:
        if not samples:
            raise ValueError("Stats.of: no samples; a figure needs at least one measurement")
        ordered = sorted(float(s) for s in samples)
        n = len(ordered)
        return cls(
            n=n,
            p50=statistics.median(ordered),
            mean=statistics.fmean(ordered),
            min=ordered[0],
            max=ordered[-1],
            p90=percentile(ordered, 90) if n >= 10 else None,
            p99=percentile(ordered, 99) if n >= 20 else None,
        )


def percentile(ordered: Sequence[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default), on sorted data."""
    if not ordered:
        raise ValueError("percentile of no samples")
    position = (len(ordered) - 1) * q / 100
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


@dataclasses.dataclass(frozen=True, slots=True)
class Target:
    """A goal from the issue, reported against, never asserted. `met` None: not evaluable
    at this size (a smoke run, or a size smaller than the target names)."""

    text: str
    met: bool | None


@dataclasses.dataclass(frozen=True, slots=True)
class Comparison:
    """One measured figure beside its baseline. `ratio` is measured p50 / baseline p50;
    `higher_is_better` says how to read it (throughput: yes; latency: no)."""

    name: str
    unit: str
    measured: Stats
    baseline_name: str
    baseline: Stats
    higher_is_better: bool = True
    targets: tuple[Target, ...] = ()
    note: str = ""

    @property
    def ratio(self) -> float:
        return self.measured.p50 / self.baseline.p50 if self.baseline.p50 else math.nan


@dataclasses.dataclass
class Report:
    scenario: str
    title: str
    parameters: dict[str, Any]
    comparisons: list[Comparison] = dataclasses.field(default_factory=list)
    notes: list[str] = dataclasses.field(default_factory=list)
    #: Top entries of a profile, taken when a target was missed (text lines).
    profile: list[str] = dataclasses.field(default_factory=list)
    #: Named curves for plots: {"name": {"x": [...], "y": [...], "xlabel": ..., "ylabel": ...}}.
    curves: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    #: Scenario-specific extra figures (absolute values), shown as a small table.
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)

    def compare(self, comparison: Comparison) -> Comparison:
        self.comparisons.append(comparison)
        return comparison


@dataclasses.dataclass(frozen=True, slots=True)
class Context:
    smoke: bool
    workdir: Path
    store_backend: str = "sqlite"

    def log(self, message: str) -> None:
        print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def machine(store_backend: str) -> dict[str, Any]:
    return {
        "cores": os.cpu_count(),
        "memory_bytes": _memory_bytes(),
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "store_backend": store_backend,
        "git_commit": _git_commit(),
    }


def _memory_bytes() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        return None


def _git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "HEAD"],
            capture_output=True, text=True, timeout=10, check=True,
        )  # fmt: skip
        dirty = subprocess.run(
            ["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, timeout=10, check=True,
        )  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() + ("+uncommitted" if dirty.stdout.strip() else "")


def peak_rss_bytes() -> int:
    """This process's peak resident set (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak) if sys.platform == "darwin" else int(peak) * 1024


def to_json(report: Report, *, smoke: bool, started: datetime, seconds: float,
            store_backend: str) -> dict[str, Any]:  # fmt: skip
    comparisons = []
    for c in report.comparisons:
        comparisons.append(
            {
                "name": c.name,
                "unit": c.unit,
                "higher_is_better": c.higher_is_better,
                "measured": dataclasses.asdict(c.measured),
                "baseline": {"name": c.baseline_name, **dataclasses.asdict(c.baseline)},
                "ratio": None if math.isnan(c.ratio) else c.ratio,
                "targets": [dataclasses.asdict(t) for t in c.targets],
                "note": c.note,
            }
        )
    return {
        "schema": SCHEMA,
        "scenario": report.scenario,
        "title": report.title,
        "smoke": smoke,
        "started": started.isoformat(timespec="seconds"),
        "duration_seconds": round(seconds, 2),
        "machine": machine(store_backend),
        "parameters": report.parameters,
        "comparisons": comparisons,
        "extra": report.extra,
        "notes": report.notes,
        "profile": report.profile,
        "curves": report.curves,
    }


def write(path: Path, document: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(document, indent=2, sort_keys=False, allow_nan=False) + "\n")
    tmp.replace(path)


def now() -> datetime:
    return datetime.now(UTC)
