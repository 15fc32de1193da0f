"""Scenario 1: placement throughput through the real reconcile path, against the store's raw
transaction rate measured in the same run on the same store.

Measured: `NetworkReconciler.reconcile` over every network (all applied at once, then
reconciled one after another until none asks to be requeued), VNodes placed per second of
wall time, from the first reconcile to the last. Baseline: the same store committing the
transaction a placement needs (Create the allocation + Update the PNode's accounting) one
after another, as fast as it can. Both include the store's durable commit (SQLite: WAL with
synchronous=FULL; DynamoDB: a TransactWriteItems round trip to moto).

The loop plans against an informer's PNodes as the server wires it (the controller's view,
filled once, written through by the loop). On SQLite each size is also run, on a fresh
store in the same run, with the loop listing every PNode from the store each pass (the way
it planned before the informer, issue 13): the second comparison is informer vs that.
The 100,000-PNode size runs the informer only (listing 100,000 PNodes a pass would take
minutes); the plot `placement-pass-time` shows a pass's time per VNode against the number
of PNodes, which the issue wants flat from 1,000 to 100,000.
"""

from __future__ import annotations

import gc
import os
import random
import time
from dataclasses import dataclass

from api.resources import allocation, meta, network, pnode
from benchmarks import fleet, harness, profiling
from controller import config as config_mod
from controller.runtime import clock as clock_mod
from controller.runtime import collector
from controller.state import view as view_mod
from reconcilers import network as network_loop
from reconcilers import network_apply
from store import base, sqlite, url
from tests.support import moto

NAME = "placement"
_INFORMED = "informer (the loop as served), wall"
_INFORMED_CPU = "informer, CPU (process time)"
_LISTED = "listing every PNode each pass, wall"
_LISTED_CPU = "listing, CPU (process time)"
TARGET_RATE = 2000.0
TARGET_SHARE = 0.5


@dataclass(frozen=True, slots=True)
class Size:
    backend: str
    pnodes: int
    networks: int
    per_network: int
    raw: int
    #: Also run with the loop listing every PNode each pass (the pre-informer baseline).
    listed: bool = True

    @property
    def vnodes(self) -> int:
        return self.networks * self.per_network

    @property
    def label(self) -> str:
        return f"{self.backend}, {self.pnodes:,} PNodes, {self.vnodes:,} VNodes"


FULL = (
    Size("sqlite", 1_000, 20, 1_000, 2_000),
    Size("sqlite", 10_000, 20, 1_000, 2_000),
    Size("sqlite", 100_000, 20, 1_000, 2_000, listed=False),
    Size("dynamodb", 50, 4, 50, 60),
)
SMOKE = (Size("sqlite", 40, 2, 20, 40), Size("dynamodb", 8, 1, 8, 6))


async def run(ctx: harness.Context) -> harness.Report:
    sizes = SMOKE if ctx.smoke else FULL
    report = harness.Report(
        NAME,
        "Placement throughput: the network loop vs the store's raw transaction rate",
        {
            "sizes": [
                {
                    "backend": s.backend,
                    "pnodes": s.pnodes,
                    "networks": s.networks,
                    "vnodes_per_network": s.per_network,
                    "raw_transactions": s.raw,
                }
                for s in sizes
            ],
            "network_shape": "chains; 100m-500m CPU, 64-256Mi; 1 in 50 wants an a100",
            "pnode_shape": "4/8/16 cores, 8/16/32Gi, 1 in 10 with 1-4 a100s",
            "max_transaction_ops": base.MAX_TRANSACTION_OPS,
        },
    )
    #: Series -> (PNodes, ms per VNode: p50 of the passes), for the plot.
    per_vnode: dict[str, list[tuple[int, float]]] = {}
    for size in sizes:
        if size.backend == "sqlite":
            listing: harness.Stats | None = None
            if size.listed:
                listed = await sqlite.SqliteStore.open(
                    ctx.workdir / f"placement-{size.pnodes}-listed.db"
                )
                listing = await _measure(ctx, report, listed, size, informer=False)
                per_vnode.setdefault(_LISTED, []).append((size.pnodes, 1e3 / listing.p50))
                cpu = report.extra[f"sqlite-{size.pnodes}-listed"]["cpu_ms_per_vnode_p50"]
                per_vnode.setdefault(_LISTED_CPU, []).append((size.pnodes, cpu))
            store: base.Store = await sqlite.SqliteStore.open(
                ctx.workdir / f"placement-{size.pnodes}.db"
            )
            informed = await _measure(ctx, report, store, size)
            per_vnode.setdefault(_INFORMED, []).append((size.pnodes, 1e3 / informed.p50))
            cpu = report.extra[f"sqlite-{size.pnodes}"]["cpu_ms_per_vnode_p50"]
            per_vnode.setdefault(_INFORMED_CPU, []).append((size.pnodes, cpu))
            if listing is None:
                continue
            report.compare(
                harness.Comparison(
                    name=f"placement, {size.label}, informer vs a PNode list per pass",
                    unit="VNodes/s",
                    measured=informed,
                    baseline_name="the same loop listing every PNode from the store each pass",
                    baseline=listing,
                    note="per-network passes, each size on a fresh store, same run",
                )
            )
        else:
            os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
            os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
            with moto.MotoServer() as endpoint:
                store_url = f"dynamodb://bench?region=us-east-1&endpoint={endpoint}"
                await url.init_store(store_url)
                store = await url.open_store(store_url)
                await _measure(ctx, report, store, size)
    if per_vnode:
        report.curves["placement-pass-time"] = {
            "kind": "per-size",
            "title": "placement: a pass's wall and CPU time per VNode (sqlite, p50 of passes)",
            "xlabel": "PNodes",
            "ylabel": "ms per VNode",
            "series": per_vnode,
        }
    report.notes.append(
        "Placements are written in groups (reconcilers/network_apply.py: consecutive Place "
        "actions share a transaction, up to MAX_TRANSACTION_OPS ops), which is why the loop "
        "can approach or pass the one-placement-per-transaction baseline."
    )
    return report


async def _measure(
    ctx: harness.Context,
    report: harness.Report,
    store: base.Store,
    size: Size,
    *,
    informer: bool = True,
) -> harness.Stats:
    """Place `size` on `store`; reported as a comparison against the raw rate unless the
    loop lists PNodes (`informer=False`, only the per-pass rates are returned). Everything
    here, the raw rate too, runs with the collector thresholds `dcnr-orchestrator serve`
    sets (`controller.runtime.collector`), restored after."""
    previous_gc = collector.tune()
    try:
        clock = clock_mod.SystemClock()
        ctx.log(f"placement: {size.label}: creating the cluster")
        pnodes = await fleet.create_pnodes(store, size.pnodes, seed=size.pnodes, now=clock.now())
        raw_rates = await _raw_rate(store, pnodes, size.raw)
        rng = random.Random(7)
        names = [f"net-{i:03d}" for i in range(size.networks)]
        await fleet.create_all(
            store,
            [fleet.network_record(n, size.per_network, rng) for n in names],
            per_transaction=1,
        )
        if informer:
            view = view_mod.View(store, clock, config=config_mod.ControlPlaneConfig())
            await view.refresh()
            pnode_changes = network_loop.ChangedPNodes()
            view.subscribe(pnode_changes.note)
            loop = network_loop.NetworkReconciler(
                store,
                clock,
                on_written=view.apply_written,
                on_deleted=view.apply_deleted,
                pnodes=lambda: view.pnodes,
                pnode_changes=pnode_changes,
                records=view,
            )
        else:
            loop = network_loop.NetworkReconciler(store, clock)
        how = "informer" if informer else "a PNode list per pass"
        ctx.log(f"placement: {size.label}, {how}: reconciling")
        per_pass: list[float] = []
        #: The process's CPU (the loop's thread and the store's) per VNode, per pass: less
        #: disturbed than wall time by other work on a shared machine.
        cpu_per_vnode: list[float] = []
        passes = requeues = 0
        pending = list(names)
        started = time.perf_counter()
        while pending:
            again = []
            for name in pending:
                t0, c0 = time.perf_counter(), time.process_time()
                result = await loop.reconcile(name)
                passes += 1
                if result.requeue:
                    requeues += 1
                    again.append(name)
                else:
                    per_pass.append(size.per_network / (time.perf_counter() - t0))
                    cpu_per_vnode.append((time.process_time() - c0) * 1e3 / size.per_network)
            pending = again
        elapsed = time.perf_counter() - started
        placed = await _count_placed(store, names)
        rate = placed / elapsed
        ctx.log(f"placement: {size.label}, {how}: {rate:.0f} VNodes/s, raw {min(raw_rates):.0f}..")
        if not informer:
            report.extra[f"{size.backend}-{size.pnodes}-listed"] = {
                "overall_vnodes_per_second": rate,
                "placed": placed,
                "seconds": elapsed,
                "cpu_ms_per_vnode_p50": harness.Stats.of(cpu_per_vnode).p50,
            }
            return harness.Stats.of(per_pass)
        targets = [harness.Target(f">= {TARGET_SHARE:.0%} of raw", None)]
        if not ctx.smoke and size.backend == "sqlite":
            share = rate / harness.Stats.of(raw_rates).p50
            targets = [harness.Target(f">= {TARGET_SHARE:.0%} of raw", share >= TARGET_SHARE)]
            if size.pnodes >= 10_000:
                targets.append(
                    harness.Target(f">= {TARGET_RATE:,.0f} VNodes/s", rate >= TARGET_RATE)
                )
        comparison = report.compare(
            harness.Comparison(
                name=f"placement, {size.label}",
                unit="VNodes/s",
                measured=harness.Stats.of(per_pass),
                baseline_name="raw Create(allocation)+Update(pnode) transactions/s",
                baseline=harness.Stats.of(raw_rates),
                targets=tuple(targets),
                note=(
                    f"overall {rate:,.0f} VNodes/s ({placed:,} placed in {elapsed:.2f}s, "
                    f"{passes} passes, {requeues} requeued; {size.vnodes - placed:,} left "
                    "unschedulable, reported with reasons in network status, e.g. a100 demand "
                    "beyond the cluster's a100s); measured = per-network passes"
                ),
            )
        )
        report.extra[f"{size.backend}-{size.pnodes}"] = {
            "overall_vnodes_per_second": rate,
            "placed": placed,
            "seconds": elapsed,
            "ratio_overall_to_raw_p50": rate / comparison.baseline.p50,
            "cpu_ms_per_vnode_p50": harness.Stats.of(cpu_per_vnode).p50,
        }
        if any(t.met is False for t in targets) and not report.profile:
            await _profile(ctx, report, store, loop, size, rng)
        return comparison.measured
    finally:
        gc.set_threshold(*previous_gc)
        await store.close()


async def _raw_rate(store: base.Store, pnodes: list[pnode.PNode], count: int) -> list[float]:
    """Transactions per second in chunks of ~10% of `count`: each commits one allocation and
    its PNode's charge, as a placement without the plan would."""
    resources = network.ResourceRequest.model_validate({"cpu": "100m", "memory": "64Mi"})
    current = {p.name: p for p in pnodes}
    order = [p.name for p in pnodes]
    chunk = max(1, count // 10)
    rates: list[float] = []
    done = 0
    while done < count:
        t0 = time.perf_counter()
        for i in range(done, min(count, done + chunk)):
            node = current[order[i % len(order)]]
            record = allocation.Allocation(
                metadata=meta.ObjectMeta(name=f"raw.v{i}.0"),
                spec=allocation.AllocationSpec(
                    network="raw", vnode=f"v{i}", replica=0, pnode=node.name, epoch=1,
                    pnode_incarnation=1, resources=resources,
                ),
            )  # fmt: skip
            charged = network_apply.charged(node, add=resources)
            written = await store.transact([base.Create(record), base.Update(charged)])
            assert isinstance(written[1], pnode.PNode)
            current[node.name] = written[1]
        n = min(count, done + chunk) - done
        rates.append(n / (time.perf_counter() - t0))
        done += n
    return rates


async def _count_placed(store: base.Store, names: list[str]) -> int:
    total = 0
    for name in names:
        total += len(await base.list_all(store, allocation.Allocation, index=("network", name)))
    return total


async def _profile(
    ctx: harness.Context,
    report: harness.Report,
    store: base.Store,
    loop: network_loop.NetworkReconciler,
    size: Size,
    rng: random.Random,
) -> None:
    """One more network's reconcile under cProfile, for the README's profile section."""
    ctx.log(f"placement: {size.label}: profiling one more network's reconcile")
    extra = fleet.network_record("net-profiled", size.per_network, rng)
    await store.create(extra)
    t0 = time.perf_counter()
    _, entries = await profiling.profiled(loop.reconcile("net-profiled"), top=14)
    seconds = time.perf_counter() - t0
    report.profile = [
        f"{size.label}: one reconcile of a {size.per_network}-VNode network under cProfile "
        f"({seconds:.2f}s with the profiler's overhead), top entries:",
        *entries,
    ]
