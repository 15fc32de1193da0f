"""Scenario 5: scale, in process. The real scheduler, NetworkReconciler, PNodeReconciler,
controller view (the informer) and SqliteStore (a file in a temp dir), a FakeClock, and
simulated agents that write their PNode and PNodeLease records directly and renew leases by
writing the lease records.

The loops are wired as `controller.server` wires them (issue 13): the network loop plans
against the view's PNodes (`pnodes=`, with the scheduler views cached per record version),
Networks and Allocations (`records=`) and writes through to the view; the lifecycle loop
decides live PNodes from the view's records (`cached=`) and writes through to it. The
process runs with the collector thresholds the served one sets
(`controller.runtime.collector`). The view is filled once after setup and follows the
store's change feed after the agents' renewals, as its refresh task would.
(Before issue 13's informer the network loop listed every PNode each pass; that variant is
measured against this one in the placement scenario, not here.)

Each size runs in its own process (`python -m benchmarks.scale --pnodes N --vnodes M`), so
its peak RSS is its own. `make bench-scale` runs the full size, 100,000 PNodes and 1,000,000
VNodes, as the scenario `scale-full` (results/scale-full.json), judged on that measurement
with no extrapolation; `make bench` runs the smaller points as `scale`. Steps:

1. N Ready PNodes with leases, M VNodes in networks of 1,000 (all created at once); then the
   network loop reconciles every network until none asks to be requeued: time to full
   placement (wall), peak RSS.
2. 10 % of the PNodes die at once: the fake clock moves past their lease (the living renew
   theirs by writing the lease records, as their agents' heartbeats would), the lifecycle
   loop runs for the dead (their lease timers: Ready -> NotReady), the clock moves past the
   grace, the lifecycle loop runs again (-> Lost), and the network loop reconciles every
   network with an allocation on a dead PNode until all are placed again. Re-convergence =
   the configured floor (lease + grace, simulated time) + the wall time of that processing
   (the view following the feed after the renewals is timed apart: the server's view does
   it every `view_refresh` in the background, spread over the lease).
3. The lifecycle loop's sustainable rate on live PNodes (a sample of 1,000 reconciles):
   every live PNode's lease timer fires once per lease, so N / lease_duration is the rate
   it has to sustain.

Reconciles run one after another on one task (a single replica with one worker): the
SQLite store serializes writes on one thread anyway, and concurrent passes over networks
sharing PNodes would mostly conflict and replan.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from api.resources import allocation, lease, pnode
from benchmarks import fleet, harness, profiling
from controller import config as config_mod
from controller.runtime import clock as clock_mod
from controller.runtime import collector
from controller.state import view as view_mod
from reconcilers import base as reconcile_base
from reconcilers import network as network_loop
from reconcilers import pnode as pnode_loop
from store import base, sqlite

NAME = "scale"
NAME_FULL = "scale-full"
PER_NETWORK = 1000
TARGET = {"pnodes": 100_000, "vnodes": 1_000_000}
TARGET_PLACEMENT_S = 600.0
TARGET_RSS = 4 * 2**30
TARGET_RECONVERGE_S = 60.0
FULL_POINTS = ((2_000, 20_000), (5_000, 50_000), (10_000, 100_000))
TARGET_POINTS = ((TARGET["pnodes"], TARGET["vnodes"]),)
SMOKE_POINTS = ((100, 500),)


# -- the worker: one size, in its own process ------------------------------------------------


async def simulate(pnodes: int, vnodes: int, per_network: int, workdir: Path) -> dict[str, Any]:
    config = config_mod.ControlPlaneConfig()
    clock = clock_mod.FakeClock()
    # The collector thresholds `dcnr-orchestrator serve` sets (as the placement scenario
    # does): with CPython's defaults a re-placement pass paid for full collections walking
    # the whole view, which the served process considers 500 times less often.
    previous_gc = collector.tune()
    store = await sqlite.SqliteStore.open(workdir / "scale.db", clock=clock.now)
    try:
        t0 = time.perf_counter()
        # Only the names are kept: the records are the store's and the view's, and a copy
        # held here would count in the orchestrator's peak RSS.
        names_all = [
            n.name
            for n in await fleet.create_pnodes(
                store, pnodes, seed=pnodes, now=clock.now(), lease_duration=config.lease_duration
            )
        ]
        rng = random.Random(11)
        count = max(1, vnodes // per_network)
        names = [f"net-{i:04d}" for i in range(count)]
        for name in names:
            await store.create(fleet.network_record(name, vnodes // count, rng))
        rss_records = harness.peak_rss_bytes()
        view = view_mod.View(store, clock, config=config)
        await view.refresh()
        setup = time.perf_counter() - t0
        rss_view = harness.peak_rss_bytes()

        pnode_changes = network_loop.ChangedPNodes()
        view.subscribe(pnode_changes.note)
        networks = network_loop.NetworkReconciler(
            store,
            clock,
            config=config,
            on_written=view.apply_written,
            on_deleted=view.apply_deleted,
            pnodes=lambda: view.pnodes,
            pnode_changes=pnode_changes,
            records=view,
        )
        lifecycle = pnode_loop.PNodeReconciler(
            store,
            clock,
            config=config,
            on_written=view.apply_written,
            on_deleted=view.apply_deleted,
            cached=view.pnode_and_lease,
        )

        t0 = time.perf_counter()
        passes = await _converge(networks, names)
        placement = time.perf_counter() - t0
        placed = len(await base.all_versions(store, allocation.Allocation))
        rss_after_placement = harness.peak_rss_bytes()

        # Every tenth PNode, offset so the dead are not exactly the a100 PNodes (every tenth
        # from 0 in benchmarks.fleet): their VNodes need somewhere to go.
        dead = names_all[5::10]
        alive = [n for n in names_all if n not in set(dead)]
        await clock.advance(config.lease_duration + 0.1)
        renew = await _renew(store, alive, clock)
        follow = await _follow(view)
        t0 = time.perf_counter()
        for name in dead:
            await lifecycle.reconcile(name)
        detect = time.perf_counter() - t0
        await clock.advance(config.lost_grace + 0.1)
        renew += await _renew(store, alive, clock)
        follow += await _follow(view)
        t0 = time.perf_counter()
        for name in dead:
            await lifecycle.reconcile(name)
        # The view's routing: the networks with an allocation on each Lost PNode.
        affected: set[str] = set()
        for name in dead:
            affected |= view.networks_on(name)
        lost = time.perf_counter() - t0
        t0 = time.perf_counter()
        ordered = sorted(affected)
        # The first re-placement pass under cProfile (its time is counted, overhead and all).
        _, profile = await profiling.profiled(networks.reconcile(ordered[0]), top=12)
        repasses = 1 + await _converge(networks, ordered)
        replace = time.perf_counter() - t0
        # Counted a page at a time, not held: a million parsed allocations held here at once
        # were gigabytes of this process's peak RSS that the orchestrator never holds.
        gone, allocations_after, on_dead = set(dead), 0, 0
        async for held in base.iterate(store, allocation.Allocation):
            allocations_after += 1
            on_dead += held.spec.pnode in gone

        sample = alive[:1000]
        t0 = time.perf_counter()
        for name in sample:
            await lifecycle.reconcile(name)
        lifecycle_rate = len(sample) / (time.perf_counter() - t0)
        phases = await _phases(store, dead)
        return {
            "pnodes": pnodes,
            "vnodes": vnodes,
            "path": "informer (controller view; cached scheduler views; lifecycle cached)",
            "networks": count,
            "setup_seconds": setup,
            "placement_seconds": placement,
            "placement_passes": passes,
            "placed": placed,
            "peak_rss_bytes_after_placement": rss_after_placement,
            "dead_pnodes": len(dead),
            "affected_networks": len(affected),
            "lifecycle_not_ready_seconds": detect,
            "lifecycle_lost_seconds": lost,
            "replace_seconds": replace,
            "replace_passes": repasses,
            "reconverge_processing_seconds": detect + lost + replace,
            "reconverge_floor_seconds": config.lease_duration + config.lost_grace,
            "renewal_write_seconds": renew,
            "view_follow_seconds": follow,
            "allocations_after": allocations_after,
            "allocations_left_on_dead": on_dead,
            "dead_phases": phases,
            "lifecycle_reconciles_per_second": lifecycle_rate,
            "lifecycle_needed_per_second": pnodes / config.lease_duration,
            "peak_rss_bytes": harness.peak_rss_bytes(),
            "peak_rss_bytes_after_records": rss_records,
            "peak_rss_bytes_after_view": rss_view,
            "replace_profile": profile,
            "gc_thresholds": list(gc.get_threshold()),
        }
    finally:
        await store.close()
        gc.set_threshold(*previous_gc)


async def _converge(loop: network_loop.NetworkReconciler, names: list[str]) -> int:
    """Reconcile each network until it stops asking to be requeued (a timer for
    unschedulable slots is not a requeue); the number of passes."""
    passes = 0
    pending = list(names)
    while pending:
        again = []
        for name in pending:
            result: reconcile_base.Result = await loop.reconcile(name)
            passes += 1
            if result.requeue:
                again.append(name)
        pending = again
    return passes


async def _renew(store: base.Store, names: list[str], clock: clock_mod.FakeClock) -> float:
    """The living agents' renewals, written as lease records (100 per transaction, as the
    orchestrator's LeaseKeeper batches them); the seconds it took."""
    t0 = time.perf_counter()
    now = clock.now()
    leases = {r.name: r for r in await base.list_all(store, lease.PNodeLease)}
    for start in range(0, len(names), 100):
        ops: list[base.Op] = []
        for name in names[start : start + 100]:
            record = leases[name].model_copy(deep=True)
            record.spec.renew_time = now
            ops.append(base.Update(record))
        await store.transact(ops)
    return time.perf_counter() - t0


async def _follow(view: view_mod.View) -> float:
    """The view following the store's change feed (the agents' renewals); the seconds."""
    t0 = time.perf_counter()
    await view.follow()
    return time.perf_counter() - t0


async def _phases(store: base.Store, names: list[str]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for name in names:
        phase = (await store.get(pnode.PNode, name)).status.phase
        counts[phase] = counts.get(phase, 0) + 1
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.scale")
    parser.add_argument("--pnodes", type=int, required=True)
    parser.add_argument("--vnodes", type=int, required=True)
    parser.add_argument("--per-network", type=int, default=PER_NETWORK)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="dcnr-scale-") as tmp:
        result = asyncio.run(simulate(args.pnodes, args.vnodes, args.per_network, Path(tmp)))
    print(json.dumps(result))


# -- the scenario: several sizes, and the extrapolation --------------------------------------


async def run(ctx: harness.Context) -> harness.Report:
    """`make bench`: the smaller points, and the extrapolation to full size."""
    return await _run(ctx, NAME, SMOKE_POINTS if ctx.smoke else FULL_POINTS)


async def run_full(ctx: harness.Context) -> harness.Report:
    """`make bench-scale`: the full size, measured and judged as measured."""
    return await _run(ctx, NAME_FULL, SMOKE_POINTS if ctx.smoke else TARGET_POINTS)


async def _run(
    ctx: harness.Context, name: str, points: tuple[tuple[int, int], ...]
) -> harness.Report:
    per_network = 100 if ctx.smoke else PER_NETWORK
    report = harness.Report(
        name,
        "Scale: simulated cluster, real scheduler, reconcilers, view (informer) and SQLite "
        "store" + (" at full size" if name == NAME_FULL else ""),
        {
            "path": "the network loop plans against the view's PNodes, as the server wires it",
            "points": [{"pnodes": p, "vnodes": v} for p, v in points],
            "vnodes_per_network": per_network,
            "dead_fraction": 0.1,
            "clock": "controller.runtime.clock.FakeClock",
            "timings": "ControlPlaneConfig defaults (lease 4 s, grace 2 s)",
            "gc_thresholds": list(collector.THRESHOLDS),
        },
    )
    results = []
    for pnodes, vnodes in points:
        ctx.log(f"scale: {pnodes:,} PNodes, {vnodes:,} VNodes (own process)")
        results.append(await asyncio.to_thread(_worker, pnodes, vnodes, per_network))
        r = results[-1]
        ctx.log(
            f"scale: placed {r['placed']:,} in {r['placement_seconds']:.1f}s, re-converged in "
            f"{r['reconverge_processing_seconds']:.1f}s (+{r['reconverge_floor_seconds']:g}s floor)"
        )
    report.extra["points"] = [
        {k: v for k, v in r.items() if k != "replace_profile"} for r in results
    ]
    report.profile = [
        f"{results[-1]['pnodes']:,} PNodes: the first re-placement pass of one network after "
        "10 % died, under cProfile:",
        *results[-1]["replace_profile"],
    ]
    _compare(ctx, report, results, per_network)
    return report


def _worker(pnodes: int, vnodes: int, per_network: int) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.scale", "--pnodes", str(pnodes),
         "--vnodes", str(vnodes), "--per-network", str(per_network)],
        capture_output=True, text=True, cwd=harness.REPO, timeout=3600,
    )  # fmt: skip
    if out.returncode != 0:
        raise RuntimeError(f"scale worker {pnodes}/{vnodes} failed:\n{out.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def _fit(xs: list[float], ys: list[float]) -> tuple[float, float]:
    """Least-squares line y = a*x + b (a single point: through the origin)."""
    if len(xs) == 1:
        return ys[0] / xs[0] if xs[0] else 0.0, 0.0
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    a = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx if sxx else 0.0
    return a, my - a * mx


def _compare(
    ctx: harness.Context, report: harness.Report, results: list[dict[str, Any]], per_network: int
) -> None:
    largest = results[-1]
    at_target = largest["pnodes"] >= TARGET["pnodes"] and largest["vnodes"] >= TARGET["vnodes"]
    label = f"{largest['pnodes']:,} PNodes, {largest['vnodes']:,} VNodes"
    floor = largest["reconverge_floor_seconds"]
    reconverge = largest["reconverge_processing_seconds"] + floor
    place_x, reconverge_x, rss_x = (
        (largest["placement_seconds"], reconverge, float(largest["peak_rss_bytes"]))
        if at_target
        else _extrapolate(report, results)
    )
    smoke = ctx.smoke

    def target(text: str, ok: bool) -> harness.Target:
        """Judged on the measurement at full size, else on the extrapolation (and so
        labelled); never in a smoke run."""
        if smoke:
            return harness.Target(text, None)
        return harness.Target(text if at_target else f"{text} (judged on the EXTRAPOLATION)", ok)

    def beyond(text: str) -> str:
        return "measured at full size" if at_target else f"extrapolated to full size: {text}"

    report.compare(
        harness.Comparison(
            name=f"time to full placement, {label}",
            unit="s",
            measured=harness.Stats.of([largest["placement_seconds"]]),
            baseline_name="target: 600 s at 100k PNodes / 1M VNodes",
            baseline=harness.Stats.of([TARGET_PLACEMENT_S]),
            higher_is_better=False,
            targets=(target("<= 600 s at full size", place_x <= TARGET_PLACEMENT_S),),
            note=f"{beyond(f'{place_x:,.0f} s')} "
            f"({largest['placed'] / largest['placement_seconds']:,.0f} VNodes/s measured)",
        )
    )
    report.compare(
        harness.Comparison(
            name=f"peak RSS, {label}",
            unit="bytes",
            measured=harness.Stats.of([largest["peak_rss_bytes"]]),
            baseline_name="target: 4 GiB",
            baseline=harness.Stats.of([TARGET_RSS]),
            higher_is_better=False,
            targets=(target("<= 4 GiB at full size", rss_x <= TARGET_RSS),),
            note=f"{beyond(f'{rss_x / 2**30:.2f} GiB')}; "
            f"{largest['peak_rss_bytes'] / (largest['pnodes'] + largest['vnodes']):,.0f} "
            "bytes per PNode+VNode",
        )
    )
    report.compare(
        harness.Comparison(
            name=f"re-convergence after 10% die, {label}",
            unit="s",
            measured=harness.Stats.of([reconverge]),
            baseline_name="floor: lease_duration + lost_grace (simulated)",
            baseline=harness.Stats.of([floor]),
            higher_is_better=False,
            targets=(target("<= 60 s at full size", reconverge_x <= TARGET_RECONVERGE_S),),
            note=f"processing {largest['reconverge_processing_seconds']:.1f} s + floor; "
            + beyond(f"{reconverge_x:,.0f} s"),
        )
    )
    series = {
        "full placement": [(r["pnodes"], r["placement_seconds"]) for r in results],
        "re-convergence (processing)": [
            (r["pnodes"], r["reconverge_processing_seconds"]) for r in results
        ],
    }
    if at_target:
        report.curves["scale"] = {
            "kind": "scale",
            "title": "scale: measured at full size",
            "xlabel": "PNodes (VNodes = 10 x PNodes)",
            "ylabel": "seconds",
            "series": series,
        }
        report.notes.append(f"Measured at {label} in one process: no extrapolation.")
    else:
        report.curves["scale"] = {
            "kind": "scale",
            "title": "scale: measured points and the extrapolation",
            "xlabel": "PNodes (VNodes = 10 x PNodes)",
            "ylabel": "seconds",
            "series": series,
            "extrapolated": {
                "full placement": [(TARGET["pnodes"], place_x)],
                "re-convergence (processing)": [(TARGET["pnodes"], reconverge_x - floor)],
            },
        }
        report.notes.append(
            f"Measured up to {label}; figures at 100,000 PNodes / 1,000,000 VNodes are "
            "EXTRAPOLATED from the measured points with the model in extra.extrapolation. "
            "The full size is measured by `make bench-scale` (scenario scale-full)."
        )
    need, have = largest["lifecycle_needed_per_second"], largest["lifecycle_reconciles_per_second"]
    report.notes.append(
        f"The lifecycle loop (cached path) reconciled live PNodes at {have:,.0f}/s; every live "
        f"PNode's lease timer fires once per lease, i.e. {need:,.0f}/s at this size and "
        f"{TARGET['pnodes'] / 4:,.0f}/s at 100,000 PNodes."
    )


def _extrapolate(
    report: harness.Report, results: list[dict[str, Any]]
) -> tuple[float, float, float]:
    """Placement, re-convergence and peak RSS at full size from the measured points, with
    the model recorded in the report (labelled as an extrapolation)."""
    largest = results[-1]
    # Time per VNode fitted as a line in the PNode count (a: what still grows with the
    # cluster, e.g. the scheduler's scans; b: the per-VNode cost of the plan and its writes).
    # On a shared machine the points are noisy; a line that falls with the cluster is that
    # noise (a VNode never gets cheaper to place with more PNodes to plan against), so the
    # figure is never below the largest point's own cost per VNode.
    ps = [float(r["pnodes"]) for r in results]
    a, b = _fit(ps, [r["placement_seconds"] / r["vnodes"] for r in results])
    place_floor = largest["placement_seconds"] / largest["vnodes"]
    place_x = TARGET["vnodes"] * max(a * TARGET["pnodes"] + b, place_floor)
    ra, rb = _fit(ps, [r["reconverge_processing_seconds"] / r["vnodes"] for r in results])
    reconverge_floor = largest["reconverge_processing_seconds"] / largest["vnodes"]
    reconverge_x = (
        TARGET["vnodes"] * max(ra * TARGET["pnodes"] + rb, reconverge_floor)
        + largest["reconverge_floor_seconds"]
    )
    records = [float(r["pnodes"] + r["vnodes"]) for r in results]
    ma, mb = _fit(records, [float(r["peak_rss_bytes"]) for r in results])
    rss_x = ma * (TARGET["pnodes"] + TARGET["vnodes"]) + mb
    report.extra["extrapolation"] = {
        "label": "EXTRAPOLATION to 100,000 PNodes and 1,000,000 VNodes, not a measurement",
        "model": "placement s/VNode = max(a*PNodes + b, the largest point's s/VNode); "
        "re-convergence likewise; RSS linear in PNodes+VNodes; fitted on the measured points",
        "placement_seconds": place_x,
        "reconverge_seconds": reconverge_x,
        "peak_rss_bytes": rss_x,
        "fit": {"placement": [a, b], "reconverge": [ra, rb], "rss": [ma, mb]},
    }
    return place_x, reconverge_x, rss_x


if __name__ == "__main__":
    main()
