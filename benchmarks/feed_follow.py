"""What the view pays to follow the change feed, by who wrote the changes (issue 13).

In process: a SQLite file, the controller view on a FakeClock, records written straight into
the store. Each step writes the same kind and number of records twice, once as this
replica (the write applied to its view at once, as the loops and the lease keeper do) and
once as another replica would (not applied), and times `View.follow` after each: the other
replica's changes must be parsed and applied, this replica's are already held. So the
ratio own / other, measured in one run on one code, is what skipping held changes saves
(about 1 before it existed). Steps:

1. allocations: `--allocations` created in transactions of 100, over `--pnodes` PNodes;
2. renewals: every PNode's lease record updated (100 per transaction), as renewals are;
3. gone: this replica writes more allocations than the feed keeps (`--retention`), so its
   cursor is Gone and the view must read the store again; timed against a full read
   (`View.refresh`) of the same store in the same run.

Wall seconds (`time.perf_counter`) and CPU seconds of the whole process (`time.process_time`,
the store's worker thread included) are reported; compare ratios, not absolute figures.

    python -m benchmarks.feed_follow --pnodes 10000 --allocations 100000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

from api.resources import allocation, lease, meta
from benchmarks import fleet
from controller import config as config_mod
from controller.runtime import clock as clock_mod
from controller.state import view as view_mod
from store import base, sqlite

PER_TRANSACTION = 100


async def timed(step: Callable[[], Awaitable[None]]) -> dict[str, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    await step()
    return {"wall_s": time.perf_counter() - wall, "cpu_s": time.process_time() - cpu}


def ratio(own: dict[str, float], other: dict[str, float]) -> dict[str, float]:
    return {key: own[key] / other[key] for key in own if other[key] > 0}


def allocation_record(index: int, pnodes: list[str], network: str) -> allocation.Allocation:
    return allocation.Allocation(
        metadata=meta.ObjectMeta(name=f"{network}.v{index:07d}.0"),
        spec=allocation.AllocationSpec(
            network=network,
            vnode=f"v{index:07d}",
            replica=0,
            pnode=pnodes[index % len(pnodes)],
            epoch=1,
            pnode_incarnation=1,
        ),
    )


async def write(store: base.Store, ops: Sequence[base.Op], through: view_mod.View | None) -> None:
    """Write `ops` in transactions; `through`: the view of the replica writing them."""
    for start in range(0, len(ops), PER_TRANSACTION):
        written = await store.transact(ops[start : start + PER_TRANSACTION])
        if through is not None:
            through.apply_written(written)


async def renewals(store: base.Store, clock: clock_mod.FakeClock) -> list[base.Op]:
    await clock.advance(1.0)
    ops: list[base.Op] = []
    for record in await base.list_all(store, lease.PNodeLease):
        record.spec.renew_time = clock.now()
        ops.append(base.Update(record))
    return ops


async def measure(pnodes: int, allocations: int, retention: int, workdir: Path) -> dict[str, Any]:
    config = config_mod.ControlPlaneConfig()
    clock = clock_mod.FakeClock()
    out: dict[str, Any] = {"pnodes": pnodes, "allocations": allocations}
    # Step 1 and 2: a feed that keeps everything written here, so no cursor goes Gone.
    store = await sqlite.SqliteStore.open(
        workdir / "follow.db", clock=clock.now, feed_retention=10 * (allocations + pnodes)
    )
    try:
        nodes = await fleet.create_pnodes(
            store, pnodes, seed=pnodes, now=clock.now(), lease_duration=config.lease_duration
        )
        names = [n.name for n in nodes]
        view = view_mod.View(store, clock, config=config)
        await view.refresh()
        half = allocations // 2
        own = [base.Create(allocation_record(i, names, "own")) for i in range(half)]
        other = [base.Create(allocation_record(i, names, "other")) for i in range(half)]
        await write(store, own, view)
        out["allocations_own"] = await timed(view.follow)
        await write(store, other, None)
        out["allocations_other"] = await timed(view.follow)
        out["allocations_own_over_other"] = ratio(out["allocations_own"], out["allocations_other"])

        await write(store, await renewals(store, clock), view)
        out["renewals_own"] = await timed(view.follow)
        await write(store, await renewals(store, clock), None)
        out["renewals_other"] = await timed(view.follow)
        out["renewals_own_over_other"] = ratio(out["renewals_own"], out["renewals_other"])
        out["view_feed_held"] = getattr(view, "feed_held", None)
    finally:
        await store.close()

    # Step 3: a feed that keeps `retention` changes; this replica writes past it.
    store = await sqlite.SqliteStore.open(
        workdir / "gone.db", clock=clock.now, feed_retention=retention
    )
    try:
        nodes = await fleet.create_pnodes(
            store, pnodes, seed=pnodes, now=clock.now(), lease_duration=config.lease_duration
        )
        names = [n.name for n in nodes]
        view = view_mod.View(store, clock, config=config)
        await view.refresh()
        own = [base.Create(allocation_record(i, names, "own")) for i in range(allocations)]
        await write(store, own, view)
        await write(store, await renewals(store, clock), None)  # and others' writes too
        relists = view.relists_after_gone
        out["gone_follow"] = await timed(view.follow)
        out["gone_relists"] = view.relists_after_gone - relists
        out["gone_full_read"] = await timed(view.refresh)
        out["gone_follow_over_full_read"] = ratio(out["gone_follow"], out["gone_full_read"])
    finally:
        await store.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.feed_follow")
    parser.add_argument("--pnodes", type=int, default=10_000)
    parser.add_argument("--allocations", type=int, default=100_000)
    parser.add_argument("--retention", type=int, default=sqlite.DEFAULT_FEED_RETENTION)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="dcnr-feed-follow-") as tmp:
        result = asyncio.run(measure(args.pnodes, args.allocations, args.retention, Path(tmp)))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
