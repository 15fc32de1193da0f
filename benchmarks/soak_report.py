"""The soak's report: markdown for people (verdicts with evidence, fault log,
re-convergence times) and a JSON summary for tests."""

from __future__ import annotations

import platform
import statistics
import subprocess
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from benchmarks import soak_invariants as inv

if TYPE_CHECKING:
    from benchmarks.soak import Soak


def git(*args: str) -> str:
    return subprocess.run(
        ["git", *args], capture_output=True, text=True, check=True, timeout=10
    ).stdout


def _commit() -> str:
    try:
        head = git("rev-parse", "--short", "HEAD").strip()
        dirty = git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return head + ("+uncommitted" if dirty.strip() else "")


def _mark(holds: bool | None) -> str:
    return {True: "holds", False: "**FAILS**", None: "not evaluated"}[holds]


def _seconds(value: float | None) -> str:
    return "never" if value is None else f"{value:.1f} s"


def summary(s: Soak, verdicts: list[inv.Verdict], *, failure: str) -> dict[str, Any]:
    return {
        "seed": s.opts.seed,
        "duration": s.opts.duration,
        "faults": s.faults_done,
        "aborted": failure,
        "verdicts": [
            {"name": v.name, "holds": v.holds, "summary": v.summary, "evidence": v.evidence}
            for v in verdicts
        ],
        "training": s.training,
    }


def render(s: Soak, verdicts: list[inv.Verdict], *, failure: str) -> str:
    o, c, ck = s.opts, s.cluster, s.checker
    lines = [
        f"# Chaos soak, seed {o.seed}, {o.duration / 60:g} minutes of faults",
        "",
        f"Written by `python -m benchmarks.soak --seed {o.seed} --duration {o.duration:g}s"
        f" --replicas {o.replicas} --agents {o.agents} --networks {o.networks}"
        f" --epochs {o.epochs}` at {datetime.now(UTC).isoformat(timespec='seconds')},"
        f" git `{_commit()}`, on {platform.node() or 'this machine'}"
        f" (CPython {platform.python_version()}).",
        "",
        f"Cluster: a moto server (DynamoDB, serialized), {len(c.replicas)} `dcnr-orchestrator"
        f" serve` replicas (default timings: lease {ck.lease:g} s, grace"
        f" {ck.grace:g} s), {len(c.agents)} `dcnr-agent`s (1 cpu, 1Gi each),"
        " TLS on both planes, admin token; networks "
        + ", ".join(f"`{n}`" for n in ck.desired)
        + f"; the digits job trained {o.epochs} epochs undisturbed, then again and again, one"
        " run after the other, for as long as the faults ran.",
        "",
    ]
    if failure:
        lines += [f"**The soak was aborted: {failure}.** Verdicts below cover what it saw.", ""]
    lines += ["## Verdicts", "", "| invariant | verdict | evidence |", "|---|---|---|"]
    lines += [f"| {v.name} | {_mark(v.holds)} | {v.summary} |" for v in verdicts]
    for v in verdicts:
        if v.evidence:
            lines += ["", f"### {v.name}: {_mark(v.holds)}", ""]
            lines += [f"- {e}" for e in v.evidence]
    polls = f"{ck.rounds:,} polls ({ck.complete_rounds:,} complete)"
    errors = ", ".join(f"{n} {part}" for part, n in sorted(ck.poll_errors.items())) or "none"
    lines += ["", "## Polling", "", f"{polls}; failed calls: {errors}.", ""]
    lines += _times(ck)
    lines += ["## Restarts", "", "| process | starts |", "|---|---:|"]
    lines += [f"| {m.name} | {m.starts} |" for m in [*c.replicas, *c.agents]]
    lines += ["", "## Fault log", "", "| t | event |", "|---:|---|"]
    lines += [f"| {at:.1f} s | {text} |" for at, text in s.log]
    return "\n".join(lines) + "\n"


def _times(ck: inv.Checker) -> list[str]:
    lines = ["## Re-convergence after each fault", ""]
    healed = ck.convergence_times()
    done = [t for _, _, _, t in healed if t is not None]
    if done:
        lines.append(
            f"From healing (restart or SIGCONT) to every VNode resolvable with all replicas,"
            f" every allocation Running on a Ready PNode and every running agent Ready:"
            f" p50 {statistics.median(done):.1f} s, max {max(done):.1f} s over {len(done)}"
            f" faults ({len(healed) - len(done)} never). Bound {ck.bound:g} s."
        )
    lines += ["", "| fault | what | down for | re-converged after healing |",
              "|---:|---|---:|---:|"]  # fmt: skip
    lines += [f"| {i} | {what} | {held:.1f} s | {_seconds(t)} |" for i, what, held, t in healed]
    lines += ["", "## Allocations of dead agents moved", "",
              "| fault | pnode | slots | moved after |", "|---:|---|---:|---:|"]  # fmt: skip
    lines += [f"| {i} | {p} | {n} | {_seconds(t)} |" for i, p, n, t in ck.move_times()]
    return [*lines, ""]
