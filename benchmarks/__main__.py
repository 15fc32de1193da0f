"""`python -m benchmarks [--scenario NAME ...] [--smoke] [--results-dir DIR]`.

Runs the scenarios one after another (they would disturb each other's timings in parallel),
writes `<results-dir>/<scenario>.json` for each, then regenerates the README from every JSON
file in the results directory (the default one: benchmarks/README.md; another directory gets
its own README.md, so a smoke run never overwrites the committed report).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
import traceback
from collections.abc import Awaitable, Callable
from pathlib import Path

from benchmarks import (
    admission,
    auth,
    dashboard,
    failover,
    harness,
    idle,
    ingest,
    placement,
    propagation,
    report,
    scale,
    training,
    training_failure,
    validation,
    wide,
)

Scenario = Callable[[harness.Context], Awaitable[harness.Report]]
SCENARIOS: dict[str, Scenario] = {
    placement.NAME: placement.run,
    failover.NAME: failover.run,
    ingest.NAME: ingest.run,
    propagation.NAME: propagation.run,
    idle.NAME: idle.run,
    training.NAME: training.run,
    training_failure.NAME: training_failure.run,
    wide.NAME: wide.run,
    scale.NAME: scale.run,
    validation.NAME: validation.run,
    admission.NAME: admission.run,
    auth.NAME: auth.run,
    dashboard.NAME: dashboard.run,
}
#: Run only when named (`--scenario`), never by default: `make bench-scale` (about 15-20
#: minutes on its own, outside `make bench`'s budget).
OPT_IN: dict[str, Scenario] = {
    scale.NAME_FULL: scale.run_full,
}
DEFAULT_RESULTS = Path(__file__).resolve().parent / "results"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument(
        "--scenario", action="append", choices=sorted({*SCENARIOS, *OPT_IN}), default=None,
        help="run only this scenario (repeatable; default: all)",
    )  # fmt: skip
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: seconds per scenario")
    parser.add_argument("--results-dir", type=Path, default=DEFAULT_RESULTS)
    return parser


async def _run(names: list[str], *, smoke: bool, results: Path) -> list[str]:
    failed = []
    for name in names:
        with tempfile.TemporaryDirectory(prefix=f"dcnr-bench-{name}-") as tmp:
            ctx = harness.Context(smoke=smoke, workdir=Path(tmp))
            started, t0 = harness.now(), time.perf_counter()
            ctx.log(f"{name}: start{' (smoke)' if smoke else ''}")
            try:
                outcome = await {**SCENARIOS, **OPT_IN}[name](ctx)
            except Exception:
                traceback.print_exc()
                failed.append(name)
                continue
            seconds = time.perf_counter() - t0
            document = harness.to_json(
                outcome, smoke=smoke, started=started, seconds=seconds, store_backend="sqlite"
            )
            harness.write(results / f"{name}.json", document)
            ctx.log(f"{name}: done in {seconds:.1f}s")
    return failed


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    names = args.scenario or list(SCENARIOS)
    results: Path = args.results_dir
    failed = asyncio.run(_run(names, smoke=args.smoke, results=results))
    readme = results.parent / "README.md" if results == DEFAULT_RESULTS else results / "README.md"
    report.regenerate(results, readme, plots=readme.parent / "plots", smoke=args.smoke)
    if failed:
        print(f"benchmarks failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
