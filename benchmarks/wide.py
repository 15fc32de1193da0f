"""Scenario: a compute-bound network (issue 17), where numpy work dominates each step, to
show what users with real models get: WIDE dense layers of UNITS units (relu between), a
10-class output and a softmax loss, on a synthetic data set this scenario generates (ROWS
rows of FEATURES features, labelled by a fixed random teacher network), trained across
three agents against the single-process reference, batch 256.

Measured exactly as the `training` scenario measures digits (its `interleaved`: the
reference in fresh subprocesses taking turns with the agents' jobs, BLAS threads pinned for
both, the spread check), with one cluster (in-process delivery on, the default).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import yaml

from benchmarks import harness, training

NAME = "training-wide"
WIDE, UNITS, FEATURES, CLASSES, ROWS = 4, 1024, 256, 10, 4096
SMOKE_ROWS = 512
TARGET_SHARE = 0.8
SIZE = training.Size(rounds=3, epochs_per_round=2, hop_rounds=0, hop_calls=0)
SMOKE = training.Size(rounds=1, epochs_per_round=1, hop_rounds=0, hop_calls=0)


def write_data(path: Path, rows: int) -> None:
    """`rows` x FEATURES float32 inputs and the labels a random two-layer teacher gives them."""
    rng = np.random.default_rng(17)
    x = rng.standard_normal((rows, FEATURES)).astype(np.float32)
    hidden = np.maximum(x @ rng.standard_normal((FEATURES, 64)), 0)
    y = np.argmax(hidden @ rng.standard_normal((64, CLASSES)), axis=1).astype(np.int64)
    np.savez(path, x_train=x, y_train=y)


def manifest(data: Path) -> dict[str, Any]:
    ref = {"url": f"file://{data}", "dataset": "wide"}
    vnodes: list[dict[str, Any]] = [
        {"name": "x", "kind": "input", "params": {"field": "x_train"}, "data": ref},
        {"name": "y", "kind": "input", "params": {"field": "y_train"}, "data": ref},
    ]
    previous = "x"
    for i in range(1, WIDE + 1):
        vnodes.append({"name": f"fc{i}", "kind": "dense", "inputs": [previous],
                       "params": {"units": UNITS}})  # fmt: skip
        vnodes.append({"name": f"act{i}", "kind": "relu", "inputs": [f"fc{i}"]})
        previous = f"act{i}"
    vnodes.append({"name": "out", "kind": "dense", "inputs": [previous],
                   "params": {"units": CLASSES}})  # fmt: skip
    vnodes.append({"name": "loss", "kind": "softmax_cross_entropy", "inputs": ["out", "y"]})
    for v in vnodes:
        v["resources"] = {"cpu": "100m", "memory": "128Mi"}
    return {
        "apiVersion": "dcnr.io/v1",
        "kind": "Network",
        "metadata": {"name": "wide"},
        "spec": {"vnodes": vnodes},
    }


async def run(ctx: harness.Context) -> harness.Report:
    size = SMOKE if ctx.smoke else SIZE
    root = ctx.workdir / "wide"
    root.mkdir(parents=True, exist_ok=True)
    data, manifest_file = root / "data.npz", root / "network.yaml"
    rows = SMOKE_ROWS if ctx.smoke else ROWS
    write_data(data, rows)
    manifest_file.write_text(yaml.safe_dump(manifest(data)))
    steps = size.epochs_per_round * -(-rows // training.BATCH)
    with training.pinned_environment() as settings:
        report = harness.Report(
            NAME,
            f"Training a compute-bound network: {WIDE} dense layers of {UNITS} across three "
            "agents vs one process",
            {
                "network": f"x -> {WIDE} x (dense {UNITS} + relu) -> dense {CLASSES} -> "
                f"softmax loss <- y; {FEATURES} features, {rows} synthetic rows",
                "agents": 3,
                "batch_size": training.BATCH,
                "rounds": size.rounds,
                "epochs_per_round": size.epochs_per_round,
                "steps_per_job": steps,
                "optimizer": training.OPTIMIZER,
                "environment (agents and reference alike)": settings,
                "reference spread bound (p90/p10)": training.SPREAD_BOUND,
            },
        )
        sides, single = await training.interleaved(
            ctx, size, steps, manifest_file, clusters=(training.IN_PROCESS,), pipelined=False
        )
    side = sides[training.IN_PROCESS]
    measured, baseline = harness.Stats.of(side.windows), harness.Stats.of(single)
    share = measured.p50 / baseline.p50
    spread = training.spread(single)
    evaluable = not ctx.smoke and spread <= training.SPREAD_BOUND
    report.compare(
        harness.Comparison(
            name=f"training samples/s, {WIDE}x{UNITS} dense, batch 256",
            unit="samples/s",
            measured=measured,
            baseline_name="agent.runtime.reference.Reference, same steps, one process, "
            "interleaved with the agents' jobs",
            baseline=baseline,
            targets=(
                harness.Target(
                    f">= {TARGET_SHARE:.0%} of one process",
                    share >= TARGET_SHARE if evaluable else None,
                ),
            ),
            note=f"reference spread p90/p10 {spread:.2f} (bound {training.SPREAD_BOUND}); "
            f"placement {side.placement}",
        )
    )
    if spread > training.SPREAD_BOUND:
        report.notes.append(
            f"CONTENDED: the reference's per-epoch rates spread {spread:.2f}x (p90/p10), above "
            f"the bound of {training.SPREAD_BOUND}; the ratio is not evaluated."
        )
    report.extra["job_wall_seconds"] = side.walls
    return report
