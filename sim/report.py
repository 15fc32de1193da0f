"""Running a simulation and saying what it found: the outcome, as data and as markdown."""

from __future__ import annotations

import dataclasses
import time
from collections import Counter

from sim import invariants, world


@dataclasses.dataclass(frozen=True, slots=True)
class Outcome:
    params: world.Params
    digest: str
    events: int
    simulated_hours: float
    pnode_hours: float
    counts: dict[str, int]
    checked: dict[str, int]
    passes: int
    violations: tuple[invariants.Violation, ...]
    #: How far the run had come when the first invariant broke (None: none broke).
    first_violation_pnode_hours: float | None
    tail: tuple[str, ...]
    trace: tuple[str, ...]
    #: CPU seconds the run took (process time: the machine's other load does not count).
    cpu_seconds: float
    wall_seconds: float


async def simulate(params: world.Params, *, keep_trace: bool = False) -> Outcome:
    started, cpu = time.perf_counter(), time.process_time()
    sim = world.Simulation(params)
    sim.keep_trace = keep_trace
    await sim.run()
    passes = sum(r.passes for r in sim.live_replicas())
    return Outcome(
        params=params,
        digest=sim.digest(),
        events=sim.events,
        simulated_hours=sim.clock.monotonic() / 3600.0,
        pnode_hours=sim.pnode_hours,
        counts=dict(sorted(sim.counts.items())),
        checked=dict(sorted(sim.checked.items())),
        passes=passes,
        violations=tuple(sim.violations),
        first_violation_pnode_hours=sim.first_violation_pnode_hours,
        tail=tuple(sim.tail),
        trace=tuple(sim.keep),
        cpu_seconds=time.process_time() - cpu,
        wall_seconds=time.perf_counter() - started,
    )


def verdicts(outcome: Outcome) -> dict[str, int]:
    broken = Counter(v.invariant for v in outcome.violations)
    return {name: broken[name] for name in invariants.NAMES}


def markdown(outcome: Outcome) -> str:
    p = outcome.params
    lines = [
        f"seed {p.seed}: {outcome.pnode_hours:,.0f} PNode-hours over"
        f" {outcome.simulated_hours:,.0f} simulated hours, {outcome.events:,} trace events,"
        f" {outcome.passes:,} reconciles (live replicas)",
        f"wall {outcome.wall_seconds:.1f} s, cpu {outcome.cpu_seconds:.1f} s",
        f"digest {outcome.digest}",
        "",
        f"parameters: pnodes~{p.pnodes}, replicas {p.replicas}, networks {p.networks} x"
        f" {p.vnodes_per_network} VNodes, lease {p.lease:.0f}s, heartbeat {p.heartbeat:.0f}s,"
        f" view refresh {p.view_refresh:.0f}s, lost grace {p.lost_grace:.0f}s, mean life"
        f" {p.mean_life_hours:.0f}h, pause every {p.pause_every_hours:.0f}h, replica death"
        f" every {p.replica_death_every_hours:.0f}h, slow {p.slow_fraction:.0%}",
        "",
        "| invariant | checks | violations |",
        "|---|---|---|",
    ]
    for name, broken in verdicts(outcome).items():
        lines.append(f"| {name} | {outcome.checked.get(name, 0):,} | {broken} |")
    lines += ["", "| event | count |", "|---|---|"]
    lines += [f"| {k} | {v:,} |" for k, v in outcome.counts.items()]
    if outcome.violations:
        lines += ["", "violations (first 20):"]
        lines += [f"- {v.line()}" for v in outcome.violations[:20]]
    return "\n".join(lines)
