"""Scenario 6: adaptive replication's cost and what it lets through.

The digits network under `validation: adaptive` (every VNode placed on two PNodes) on ten
real agents, two of which run through the test-only fault injector and lie on 10 % of
their results (`slight`: values * 1.01, which passes every check, so only a comparison
catches it). Inference requests of 16 rows each, one after another: a warm-up while trust
is established (a PNode with fewer than 30 valid results, or a strike among its last 50,
is always double-checked: `controller.trust.sampling`), then the measured requests. The
model-level frontier against BOINC's rule is `benchmarks/frontier.py`.

Measured, over the measured requests only:
- extra compute: the orchestrator's `dcnr_inference_results{role="double_check"}` over
  `{role="primary"}` — the share of VNode results computed a second time. Baseline from the
  same run: `validation: replicas`, which computes every result twice (ratio 1.0 by
  construction, counted the same way over the same requests before the switch);
- slip-through: answers that differ from the honest single-process reference (atol 1e-6),
  over all answers; and the lies the injectors told during the measured requests.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from agent.runtime import reference
from api.resources import network as network_model
from benchmarks import harness
from tests.integration import cluster
from tests.integration import test_training as training_e2e
from tests.support import agents, liar, metrics, procs

NAME = "validation"
ROWS = 16
LIE_FRACTION = 0.1
TARGET_EXTRA = 0.15


@dataclass(frozen=True, slots=True)
class Size:
    agents: int
    liars: int
    baseline_requests: int
    warmup: int
    measured: int
    block: int


FULL = Size(agents=10, liars=2, baseline_requests=20, warmup=60, measured=300, block=25)
SMOKE = Size(agents=4, liars=1, baseline_requests=3, warmup=3, measured=6, block=3)


def _counts(metrics_port: int) -> dict[str, float]:
    samples = metrics.scrape(metrics_port)
    return metrics.by_label(samples, "dcnr_inference_results_total", "role")


def _lies(roots: list[Path]) -> int:
    return sum(liar.lies_told(root / "lies.log", phase="inference") for root in roots)


async def run(ctx: harness.Context) -> harness.Report:
    size = SMOKE if ctx.smoke else FULL
    manifest: dict[str, Any] = yaml.safe_load(training_e2e.MANIFEST.read_text())
    network = network_model.Network.model_validate(manifest)
    x_all = training_e2e.DATA["x_test"]
    batches = [x_all[i : i + ROWS] for i in range(0, len(x_all) - ROWS + 1, ROWS)]
    single = reference.Reference(
        network, seed=0, optimizer="sgd", learning_rate=0.01, workdir=agents.REPO
    )
    expected = [single.infer({"x": x})["loss"] for x in batches]
    report = harness.Report(
        NAME,
        "Adaptive replication: extra compute and slip-through with PNodes lying 10 % of the time",
        {
            "network": "examples/digits/network.yaml, validation: adaptive (2 replicas each)",
            "agents": size.agents,
            "liars": size.liars,
            "lie": f"slight (x1.01) on {LIE_FRACTION:.0%} of results",
            "rows_per_request": ROWS,
            "warmup_requests": size.warmup,
            "measured_requests": size.measured,
        },
    )
    root = ctx.workdir / NAME
    liar_roots = [root / f"liar-{i}" for i in range(size.liars)]
    store_url = f"sqlite:///{root / 'state.db'}"
    with (
        procs.orchestrator(
            store_url,
            extra=("--metrics-listen", "127.0.0.1:0"),
            log=root / "orchestrator.log",
            log_level="warning",
        ) as served,
        agents.agents(served.address, root, size.agents - size.liars, prefix="honest") as honest,
        _liars(served.address, liar_roots) as liars,
    ):
        api, jobs = cluster.Api(served.address), training_e2e.Jobs(served.address)
        metrics_port = served.metrics_port
        assert metrics_port is not None, "the orchestrator serves no metrics"
        try:
            manifest["spec"]["validation"] = "adaptive"
            await api.apply(manifest)
            every = {v.name: 2 for v in network.spec.vnodes}
            _, placed = await api.wait_resolvable(network.name, every, within=120)
            held = sorted(
                f"{v}.{i}"
                for v, endpoints in placed.items()
                for i, (p, _) in enumerate(endpoints)
                if p.startswith("liar-")
            )

            async def requests(count: int, start: int) -> tuple[list[float], int]:
                """Extra compute per block of requests, and wrong answers."""
                ratios, wrong = [], 0
                before = _counts(metrics_port)
                for i in range(count):
                    k = (start + i) % len(batches)
                    got = await jobs.infer(network.name, batches[k])
                    if not np.allclose(got, expected[k], rtol=0, atol=1e-6):
                        wrong += 1
                    if (i + 1) % size.block == 0 or i + 1 == count:
                        after = _counts(metrics_port)
                        primary = after.get("primary", 0) - before.get("primary", 0)
                        extra = after.get("double_check", 0) - before.get("double_check", 0)
                        ratios.append(extra / primary if primary else 0.0)
                        before = after
                return ratios, wrong

            ctx.log(f"{NAME}: warm-up, validation: adaptive")
            await requests(size.warmup, 0)
            lies_before = _lies(liar_roots)
            ctx.log(f"{NAME}: measured requests")
            t0 = time.perf_counter()
            adaptive, wrong = await requests(size.measured, size.warmup)
            seconds = time.perf_counter() - t0
            lies = _lies(liar_roots) - lies_before
            nodes, _, _ = await cluster.read_state(store_url)
            bugged = sorted(n.name for n in nodes if n.status.trust.bugged)
            honest_struck = sum(
                n.status.trust.strikes_total for n in nodes if not n.name.startswith("liar-")
            )
            ctx.log(f"{NAME}: baseline, validation: replicas")
            manifest["spec"]["validation"] = "replicas"
            await api.apply(manifest)
            full, full_wrong = await requests(size.baseline_requests, size.warmup + size.measured)
        finally:
            await api.close()
            await jobs.channel.close(None)
            for agent in [*honest, *liars]:  # teardown is not measured; a leave would drain
                agent.kill()
    measured = harness.Stats.of(adaptive)
    report.compare(
        harness.Comparison(
            name="extra compute under validation: adaptive",
            unit="extra results / primary results",
            measured=measured,
            baseline_name="validation: replicas (every result computed twice), same run",
            baseline=harness.Stats.of(full),
            higher_is_better=False,
            targets=(
                harness.Target(
                    f"<= {TARGET_EXTRA:.0%} extra compute once trust is established",
                    None if ctx.smoke else measured.mean <= TARGET_EXTRA,
                ),
            ),
            note=f"one figure per block of {size.block} requests; {size.measured} requests in "
            f"{seconds:.1f}s",
        )
    )
    report.extra.update(
        {
            "extra_compute_mean": measured.mean,
            "wrong_answers": wrong,
            "answers": size.measured,
            "slip_through_fraction": wrong / size.measured,
            "lies_told_during_measurement": lies,
            "wrong_answers_under_replicas": full_wrong,
            "bugged_after_measurement": ", ".join(bugged) or "none",
            "liars_held_at_start": ", ".join(held) or "none",
            "strikes_against_honest_pnodes": honest_struck,
            "lies_told_in_all": _lies(liar_roots),
        }
    )
    report.notes.append(
        f"{wrong} of {size.measured} answers ({wrong / size.measured:.1%}) differed from the "
        f"honest reference while the liars told {lies} lies; under validation: replicas "
        f"{full_wrong} of {size.baseline_requests} did. Bugged after the measured requests: "
        f"{', '.join(bugged) or 'none'}."
    )
    return report


class _liars:
    """The lying agents, each with its own seed and lie log, and the most room: the
    spreading scorer offers them the first replica (the one always computed) of most
    VNodes, the worst case for adaptive replication."""

    def __init__(self, orchestrator: str, roots: list[Path]) -> None:
        self._orchestrator = orchestrator
        self._roots = roots
        self._started: list[agents.Agent] = []

    def __enter__(self) -> list[agents.Agent]:
        for i, root in enumerate(self._roots):
            command = (
                sys.executable, "-m", "tests.support.liar",
                "--lie-fraction", str(LIE_FRACTION), "--lie-mode", "slight",
                "--lie-seed", str(i), "--lie-log", str(root / "lies.log"),
            )  # fmt: skip
            self._started.append(
                agents.Agent(
                    self._orchestrator, f"liar-{i}", root, cpu="4", memory="4Gi", command=command
                )
            )
        return self._started

    def __exit__(self, *_: object) -> None:
        for agent in self._started:
            agent.stop()
