"""Scenario 4: the training data plane. The digits example trained across three real agent
processes (driven by the orchestrator's job driver over gRPC), against
`agent.runtime.reference.Reference` taking the same steps (same batches, same VNode math,
same optimizer) in one process without gRPC, both at batch 256.

Measured: the job's own `status.samples_per_second` over each progress window the driver
writes (about every 0.5 s), polled through GetJob; also the wall time from Train to
Succeeded (which includes restoring every VNode and the final checkpoint). Baseline: the
reference's samples per second, one figure per epoch.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import numpy as np
import yaml

from agent.runtime import reference
from api.dcnr.v1 import job_pb2
from api.resources import job as job_model
from api.resources import network as network_model
from benchmarks import harness
from tests.integration import cluster
from tests.integration import test_training as training_e2e
from tests.support import agents, procs

NAME = "training"
BATCH = 256
OPTIMIZER, LEARNING_RATE, SEED = "adam", 0.01, 1
TARGET_SHARE = 0.25


@dataclass(frozen=True, slots=True)
class Size:
    epochs: int


FULL = Size(epochs=40)
SMOKE = Size(epochs=2)


async def run(ctx: harness.Context) -> harness.Report:
    size = SMOKE if ctx.smoke else FULL
    manifest = yaml.safe_load(training_e2e.MANIFEST.read_text())
    network = network_model.Network.model_validate(manifest)
    rows = len(training_e2e.DATA["y_train"])
    steps = size.epochs * -(-rows // BATCH)
    report = harness.Report(
        NAME,
        "Training data plane: digits across three agents vs one process without gRPC",
        {
            "network": "examples/digits/network.yaml (6 VNodes: x, y, fc1, act1, fc2, loss)",
            "agents": 3,
            "batch_size": BATCH,
            "epochs": size.epochs,
            "steps": steps,
            "optimizer": OPTIMIZER,
            "learning_rate": LEARNING_RATE,
            "checkpoint": "only at the end",
        },
    )
    ctx.log("training: reference, one process")
    single = _reference(network, size.epochs, rows)
    ctx.log("training: three agents")
    windows, wall, job = await _distributed(ctx, manifest, network, size.epochs, steps)
    measured = harness.Stats.of(windows)
    baseline = harness.Stats.of(single)
    share = measured.p50 / baseline.p50
    report.compare(
        harness.Comparison(
            name="training samples/s, batch 256",
            unit="samples/s",
            measured=measured,
            baseline_name="agent.runtime.reference.Reference, same steps, one process",
            baseline=baseline,
            targets=(
                harness.Target(
                    f">= {TARGET_SHARE:.0%} of one process",
                    None if ctx.smoke else share >= TARGET_SHARE,
                ),
            ),
            note=f"Train→Succeeded wall {wall:.2f}s for {steps} steps "
            f"({steps * BATCH / wall:,.0f} samples/s including restore and the final checkpoint);"
            f" final loss {job.status.loss}, accuracy {job.status.accuracy}",
        )
    )
    report.extra["distributed_wall_seconds"] = wall
    report.extra["distributed_steps_per_second_p50"] = measured.p50 / BATCH
    report.extra["reference_steps_per_second_p50"] = baseline.p50 / BATCH
    return report


def _reference(network: network_model.Network, epochs: int, rows: int) -> list[float]:
    """Samples per second of each epoch of the single-process reference."""
    single = reference.Reference(
        network, seed=SEED, optimizer=OPTIMIZER, learning_rate=LEARNING_RATE,
        workdir=agents.REPO,
    )  # fmt: skip
    rates = []
    for epoch in range(epochs):
        t0 = time.perf_counter()
        for indices in reference.batches(SEED, epoch, rows, BATCH):
            single.train_step(np.asarray(indices))
        rates.append(rows / (time.perf_counter() - t0))
    return rates


async def _distributed(
    ctx: harness.Context,
    manifest: dict[str, object],
    network: network_model.Network,
    epochs: int,
    steps: int,
) -> tuple[list[float], float, job_model.Job]:
    root = ctx.workdir / "training"
    with (
        procs.orchestrator(
            f"sqlite:///{root / 'state.db'}", log=root / "orchestrator.log", log_level="warning"
        ) as served,
        agents.agents(served.address, root, 3, cpu="2", memory="2Gi") as fleet,
    ):
        address = served.address
        api, jobs = cluster.Api(address), training_e2e.Jobs(address)
        try:
            await api.apply(manifest)
            every = {v.name: 1 for v in network.spec.vnodes}
            await api.wait_resolvable(network.name, every, within=60)
            request = job_pb2.TrainRequest(
                header=cluster.HEADER, name="bench", network=network.name, epochs=epochs,
                batch_size=BATCH, optimizer=OPTIMIZER, learning_rate=LEARNING_RATE, seed=SEED,
                checkpoint_interval=steps,
            )  # fmt: skip
            started = time.perf_counter()
            await jobs.stub.Train(request, timeout=30)
            windows: dict[int, float] = {}
            deadline = time.monotonic() + 600
            while True:
                job = await jobs.get("bench")
                status = job.status
                if status.samples_per_second and status.phase in ("Running", "Succeeded"):
                    windows[status.step] = status.samples_per_second
                if status.phase == "Succeeded":
                    break
                if status.phase in ("Failed", "Cancelled") or time.monotonic() > deadline:
                    raise AssertionError(f"training job ended {status.phase}: {status.message}")
                await asyncio.sleep(0.05)  # polling a condition with a deadline
            wall = time.perf_counter() - started
        finally:
            await api.close()
            await jobs.channel.close(None)
            for agent in fleet:  # teardown is not measured; a graceful stop would drain
                agent.kill()
    if job.status.attempt > 1:
        ctx.log(f"training: the job needed {job.status.attempt} attempts")
    return list(windows.values()), wall, job
