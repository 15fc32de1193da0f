"""Scenario: the CPU an idle orchestrator burns with many registered PNodes and no calls.

Thousands of PNodes register (and heartbeat once, so none is pending) with a lease of an
hour, so none expires; then nobody calls, and after a few seconds to settle the
orchestrator's CPU time (utime + stime of every thread, from /proc/<pid>/stat) is read over
consecutive windows. The baseline is the same binary started again on the same store in the
same run with `--view-resync` equal to `--view-refresh` (0.25 s): the view's resync at every
step instead of every minute. Before the view followed the store's change feed that was a
full re-read every step; since the resync lists only versions (`Store.versions`) it is the
resync's own cost, four times a second.
"""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass
from pathlib import Path

from benchmarks import harness, ingest, load
from tests.support import procs

NAME = "idle"
#: A long lease and grace (nothing expires while it idles) and no admission limits (one
#: client registers thousands of PNodes from one address).
FLAGS = (
    "--lease-duration", "3600", "--lost-grace", "3600", "--register-rate", "0",
    "--call-rate", "0", "--max-pending-pnodes", "1000000",
)  # fmt: skip
BEFORE = ("--view-resync", "0.25")
#: A third run (full size only) with the loops' level-triggered resync slowed from 30 s to
#: 10 minutes: the difference from the default is what the resync itself costs (it was
#: most of the idle cost until the PNode loop skipped PNodes whose records had not moved).
SLOW_RESYNC = ("--resync-every", "600")
#: A fourth run (full size only) with the view's resync (its own level-triggered net under
#: the change feed) slowed from 60 s to 10 minutes: what is left without it.
SLOW_VIEW_RESYNC = ("--view-resync", "600")
TARGET_SHARE_OF_A_CORE = 0.02


@dataclass(frozen=True, slots=True)
class Size:
    pnodes: int
    settle: float
    window: float
    windows: int


FULL = Size(pnodes=10_000, settle=20.0, window=3.0, windows=10)
SMOKE = Size(pnodes=20, settle=0.5, window=2.0, windows=2)


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process we started (all its threads), from /proc/<pid>/stat."""
    raw = Path(f"/proc/{pid}/stat").read_text()
    fields = raw[raw.rindex(")") + 2 :].split()  # after "pid (comm) "
    ticks = int(fields[11]) + int(fields[12])  # fields 14 and 15 of proc(5)
    return ticks / os.sysconf("SC_CLK_TCK")


async def _idle_shares(pid: int, size: Size) -> list[float]:
    """Share of a core used in each of `size.windows` consecutive windows."""
    await asyncio.sleep(size.settle)  # start-up's first full read is not idling
    shares = []
    for _ in range(size.windows):
        cpu0, wall0 = cpu_seconds(pid), time.monotonic()
        await asyncio.sleep(size.window)  # the measurement window itself
        shares.append((cpu_seconds(pid) - cpu0) / (time.monotonic() - wall0))
    return shares


async def _register_and_beat(address: str, count: int) -> None:
    _, beats = await ingest._register(address, count)
    async with load.channel(address, None) as channel:
        beat = channel.unary_unary(ingest.HEARTBEAT, None, None)
        gate = asyncio.Semaphore(32)

        async def one(call: load.Call) -> None:
            async with gate:
                await beat(call.body, metadata=call.metadata, timeout=60)

        await asyncio.gather(*(one(c) for c in beats))


async def run(ctx: harness.Context) -> harness.Report:
    size = SMOKE if ctx.smoke else FULL
    report = harness.Report(
        NAME,
        "Idle orchestrator: CPU with registered PNodes and no calls",
        {
            "pnodes": size.pnodes,
            "window_seconds": size.window,
            "windows": size.windows,
            "orchestrator_flags": list(FLAGS),
            "baseline_flags": list(BEFORE),
            "store": "sqlite",
        },
    )
    store_url = f"sqlite:///{ctx.workdir / 'idle.db'}"
    log = ctx.workdir / "orchestrator.log"
    shares: dict[str, list[float]] = {}
    runs = [("feed", FLAGS), ("resync every 0.25 s", FLAGS + BEFORE)]
    if not ctx.smoke:
        runs.append(("feed, --resync-every 600", FLAGS + SLOW_RESYNC))
        runs.append(("feed, --view-resync 600", FLAGS + SLOW_VIEW_RESYNC))
    for label, flags in runs:
        with procs.orchestrator(store_url, extra=flags, log=log, log_level="warning") as served:
            if not shares:
                ctx.log(f"idle: registering {size.pnodes} PNodes")
                await _register_and_beat(served.address, size.pnodes)
            ctx.log(f"idle: {label}, {size.windows} x {size.window:g} s")
            shares[label] = await _idle_shares(served.proc.pid, size)
    after = harness.Stats.of(shares["feed"])
    report.compare(
        harness.Comparison(
            name=f"idle CPU, {size.pnodes:,} PNodes, no calls",
            unit="share of a core",
            measured=after,
            baseline_name="the same with the view's resync every 0.25 s (every step)",
            baseline=harness.Stats.of(shares["resync every 0.25 s"]),
            higher_is_better=False,
            targets=(
                harness.Target(
                    f"<= {TARGET_SHARE_OF_A_CORE:.0%} of a core",
                    None if ctx.smoke else after.mean <= TARGET_SHARE_OF_A_CORE,
                ),
            ),
            note=f"{size.windows} windows of {size.window:g} s; mean {after.mean:.2%}, max"
            f" {after.max:.2%} of a core (the target is judged on the mean)",
        )
    )
    report.extra["idle_share_of_a_core"] = {k: [round(s, 4) for s in v] for k, v in shares.items()}
    if not ctx.smoke:
        report.notes += notes(shares)
    return report


def notes(shares: dict[str, list[float]]) -> list[str]:
    """What the full run's two extra runs show (each slows one periodic safety net)."""
    after = harness.Stats.of(shares["feed"])
    slow = harness.Stats.of(shares["feed, --resync-every 600"])
    view = harness.Stats.of(shares["feed, --view-resync 600"])
    return [
        f"Default (loops' resync 30 s, view's resync 60 s): mean {after.mean:.2%} of a"
        f" core, p50 {after.p50:.2%}, max {after.max:.2%}. With the loops' resync slowed to"
        f" 600 s (`--resync-every 600`): mean {slow.mean:.2%}, max {slow.max:.2%}. With the"
        f" view's resync slowed to 600 s (`--view-resync 600`): mean {view.mean:.2%},"
        f" max {view.max:.2%}. Each safety net shows only when it falls in the 30 s measured.",
        "The PNode loop's resync no longer reads the store for a PNode whose cached PNode and"
        " lease have not moved and whose next deadline is not due (reconcilers/pnode.py"
        " `settled_for`), and the view's resync lists every record's uid and version"
        " (`Store.versions`) and reads only those the change feed did not bring"
        " (controller/state/view.py `resync`): neither parses every record any more.",
    ]
