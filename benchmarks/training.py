"""Scenario 4: the training data plane. The digits example trained across three real agent
processes (driven by the orchestrator's job driver over gRPC), against
`agent.runtime.reference.Reference` taking the same steps (same batches, same VNode math,
same optimizer) in one process without gRPC, both at batch 256.

A baseline that cannot be flattered (issue 17):

- Interleaved: one cluster stays up, and the run alternates ROUNDS times between the
  reference (EPOCHS_PER_ROUND epochs in a fresh subprocess, `python -m benchmarks.training
  reference`) and a training job of as many epochs on the agents. Load that comes and goes
  on a shared machine then hits both sides, and both distributions are reported.
- The same settings: BLAS threads are pinned to 1 (`PINNED_THREADS`: OpenBLAS, OpenMP, MKL,
  Accelerate, numexpr) in the environment both the agents and every reference subprocess
  start with, and `OPENBLAS_CORETYPE` is passed through unchanged to both (it may be set on
  these machines and slows a current numpy; whatever it is, both run under it, and the
  report records it).
- In-process delivery made measurable: a second cluster of three agents started with
  `--no-in-process-delivery`, and a third of one agent hosting everything, are up beside
  the first and take their turns in every round; the report gives all three, and how many
  of the network's edges placement co-located.
- Deliver streams made measurable: a fifth cluster like the second whose agents and
  orchestrator also have `--no-stream-delivery` (a unary call per message, to peers, to
  the driver and from it, as before Deliver) takes its turns too.
- Pipelining made measurable: in every round the first cluster also runs the same job with
  each step cut into MICRO_BATCHES micro-batches (`micro_batches`, GPipe-style), right
  after its unpipelined job, on the same agents and placement. Placement gathers the small
  digits network on one agent, where parts cannot overlap (one event loop computes them
  all), so a sixth cluster of three agents with SPREAD_CPU each, too little for more than
  a third of the network, forces the VNodes apart, and runs both jobs too.
- A spread check: a reference whose per-epoch rates spread more than SPREAD_BOUND (p90 /
  p10; a quiet 2-core machine stays under 1.3) was measured under contention. Such a run
  is flagged in its notes, and its targets are reported as not evaluable (None), not as met
  or missed.

Measured: the job's own `status.samples_per_second` over each progress window the driver
writes (about every 0.5 s), polled through GetJob; baseline: the reference's samples per
second, one figure per epoch. Beside it, the per-hop figure (`benchmarks.hop`): one
VNode-to-VNode delivery against one bare grpc.aio echo round trip, in the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from agent.runtime import reference
from api.dcnr.v1 import job_pb2
from api.resources import job as job_model
from api.resources import network as network_model
from benchmarks import harness, hop
from tests.integration import cluster
from tests.integration import test_training as training_e2e
from tests.support import agents, procs

NAME = "training"
BATCH = 256
OPTIMIZER, LEARNING_RATE, SEED = "adam", 0.01, 1
#: Issue 17: digits at >= 0.15x of the reference, and >= 6x the 14,198 samples/s measured on
#: the main of the issue's day on the same machine class.
TARGET_SHARE = 0.15
TARGET_RATE = 6 * 14_198
#: Above this p90/p10 of the reference's per-epoch rates, the run was contended (above).
SPREAD_BOUND = 1.5
#: The clusters the run takes turns with: three agents delivering to co-located VNodes in
#: process (the default), three started with --no-in-process-delivery, and one agent
#: hosting the whole network (every edge in process: the most co-location can give); each
#: orchestrator with `serve --driver-listen` (the driver's inbox over mutual TLS, verifying
#: signatures lazily), and a fourth cluster like the first whose orchestrator has no
#: --driver-listen (its inbox verifies every result's signature on receipt).
IN_PROCESS, ALL_GRPC, ONE_AGENT = "in process", "all gRPC", "one agent"
EAGER_INBOX = "in process, inbox verifying every signature"
#: Like ALL_GRPC (whose agents and driver deliver on Deliver streams, the default), with
#: unary calls.
ALL_GRPC_UNARY = "all gRPC, unary calls"
#: Not a cluster: the IN_PROCESS cluster's second job of each round, its steps cut into
#: MICRO_BATCHES micro-batches (pipelined).
PIPELINED = "in process, pipelined"
MICRO_BATCHES = 4
#: Three agents too small to hold more than about a third of digits' 900m of cpu requests
#: each, so its VNodes sit on all three; and its pipelined job.
SPREAD, SPREAD_PIPELINED = "spread over three agents", "spread over three agents, pipelined"
SPREAD_CPU = "350m"
#: Every cluster of a full run, in the order they take turns.
CLUSTERS = (IN_PROCESS, ALL_GRPC, ONE_AGENT, EAGER_INBOX, ALL_GRPC_UNARY, SPREAD)
#: Each cluster that also runs each round's job pipelined, and the label of that side.
PIPELINED_SIDES = {IN_PROCESS: PIPELINED, SPREAD: SPREAD_PIPELINED}
#: The agent flags of each cluster (the others: none).
AGENT_FLAGS = {
    ALL_GRPC: ("--no-in-process-delivery",),
    ALL_GRPC_UNARY: ("--no-in-process-delivery", "--no-stream-delivery"),
}
DRIVER_LISTEN = ("--driver-listen", "127.0.0.1:0")
#: The orchestrator flags of each cluster beside its inbox's (the others: none).
SERVE_FLAGS = {ALL_GRPC_UNARY: ("--no-stream-delivery",)}
PINNED_THREADS = {
    name: "1"
    for name in (
        "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS",
        "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS",
    )
}  # fmt: skip


@dataclass(frozen=True, slots=True)
class Size:
    rounds: int
    epochs_per_round: int
    hop_rounds: int
    hop_calls: int


FULL = Size(rounds=6, epochs_per_round=10, hop_rounds=8, hop_calls=200)
SMOKE = Size(rounds=2, epochs_per_round=2, hop_rounds=2, hop_calls=20)


def spread(samples: list[float]) -> float:
    """p90 / p10 of `samples` (max / min below 10 samples): how much the machine moved."""
    ordered = sorted(samples)
    if len(ordered) < 10:
        return ordered[-1] / ordered[0]
    return harness.percentile(ordered, 90) / harness.percentile(ordered, 10)


@contextlib.contextmanager
def pinned_environment() -> Iterator[dict[str, str]]:
    """This process's environment with BLAS threads pinned, for every subprocess started
    meanwhile (agents and references alike); the settings that matter, for the report."""
    saved = {name: os.environ.get(name) for name in PINNED_THREADS}
    os.environ.update(PINNED_THREADS)
    try:
        yield {
            **PINNED_THREADS,
            "OPENBLAS_CORETYPE": os.environ.get("OPENBLAS_CORETYPE", "(unset)"),
        }
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


async def run(ctx: harness.Context) -> harness.Report:
    size = SMOKE if ctx.smoke else FULL
    network = network_model.Network.model_validate(
        yaml.safe_load(training_e2e.MANIFEST.read_text())
    )
    rows = len(training_e2e.DATA["y_train"])
    steps = size.epochs_per_round * -(-rows // BATCH)
    with pinned_environment() as settings:
        report = harness.Report(
            NAME,
            "Training data plane: digits across three agents vs one process without gRPC",
            {
                "network": "examples/digits/network.yaml (6 VNodes: x, y, fc1, act1, fc2, loss)",
                "agents": "3 per cluster, two clusters (in-process delivery on / off), a "
                "third cluster of one agent, and a fourth like the first whose orchestrator "
                "has no --driver-listen (the others have it), and a fifth like the second "
                "whose agents and driver send unary calls (--no-stream-delivery; the others: "
                "Deliver streams, the driver's messages included); a sixth of three agents "
                f"with {SPREAD_CPU} cpu each, so the VNodes are spread over them; the first "
                f"and the sixth also run each round's job pipelined ({MICRO_BATCHES} "
                "micro-batches a step)",
                "batch_size": BATCH,
                "rounds": size.rounds,
                "epochs_per_round": size.epochs_per_round,
                "steps_per_job": steps,
                "optimizer": OPTIMIZER,
                "learning_rate": LEARNING_RATE,
                "checkpoint": "only at the end of each job",
                "environment (agents and reference alike)": settings,
                "reference spread bound (p90/p10)": SPREAD_BOUND,
            },
        )
        sides, single = await interleaved(ctx, size, steps, training_e2e.MANIFEST)
        ctx.log("training: per-hop figure")
        per_hop = await hop.measure(ctx, rounds=size.hop_rounds, calls=size.hop_calls)
    side, grpc_only = sides[IN_PROCESS], sides[ALL_GRPC]
    walls, job = side.walls, side.job
    assert job is not None
    measured = harness.Stats.of(side.windows)
    baseline = harness.Stats.of(single)
    share = measured.p50 / baseline.p50
    contended = spread(single) > SPREAD_BOUND
    evaluable = not ctx.smoke and not contended
    report.compare(
        harness.Comparison(
            name="training samples/s, batch 256",
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
                harness.Target(
                    f">= {TARGET_RATE:,} samples/s (6x issue 17's 14,198)",
                    measured.p50 >= TARGET_RATE if evaluable else None,
                ),
            ),
            note=f"reference spread p90/p10 {spread(single):.2f} (bound {SPREAD_BOUND}); "
            f"Train->Succeeded wall per job {min(walls):.2f}-{max(walls):.2f}s for {steps} "
            f"steps (including restore and the final checkpoint); last job's final loss "
            f"{job.status.loss}, accuracy {job.status.accuracy}",
        )
    )
    edges = sum(len(set(v.inputs)) for v in network.spec.vnodes)
    without = harness.Stats.of(grpc_only.windows)
    report.compare(
        harness.Comparison(
            name="training samples/s, in-process delivery on vs off",
            unit="samples/s",
            measured=measured,
            baseline_name="the same, agents started with --no-in-process-delivery (every hop "
            "over gRPC), a second cluster taking turns with the first",
            baseline=without,
            note=f"{_co_located(network, side.placement)} of the {edges} edges co-located in "
            f"the measured cluster ({_co_located(network, grpc_only.placement)} in the other); "
            f"placement {side.placement}",
        )
    )
    alone = harness.Stats.of(sides[ONE_AGENT].windows)
    report.compare(
        harness.Comparison(
            name="training samples/s, one agent (every edge in process) vs three all gRPC",
            unit="samples/s",
            measured=alone,
            baseline_name="three agents started with --no-in-process-delivery, taking turns",
            baseline=without,
            note="the most co-location can give: only the driver's messages (to the sources, "
            "from the loss and the sources) cross gRPC; "
            f"{alone.p50 / baseline.p50:.3f}x of the reference",
        )
    )
    unary = harness.Stats.of(sides[ALL_GRPC_UNARY].windows)
    report.compare(
        harness.Comparison(
            name="training samples/s, all gRPC: Deliver streams vs unary calls",
            unit="samples/s",
            measured=without,
            baseline_name="the same, agents and orchestrator also started with "
            "--no-stream-delivery (a unary Forward/Backward call per message, the driver's "
            "included), a fifth cluster taking turns",
            baseline=unary,
            note=f"{_co_located(network, sides[ALL_GRPC_UNARY].placement)} of the {edges} edges "
            "co-located in the baseline cluster; in both every hop between VNodes crosses "
            "gRPC (--no-in-process-delivery), as it does between agents; the measured "
            f"cluster is {without.p50 / baseline.p50:.3f}x of the reference, the baseline "
            f"{unary.p50 / baseline.p50:.3f}x",
        )
    )
    eager = harness.Stats.of(sides[EAGER_INBOX].windows)
    report.compare(
        harness.Comparison(
            name="training samples/s, driver inbox verifying lazily vs every signature",
            unit="samples/s",
            measured=measured,
            baseline_name="the same, its orchestrator without --driver-listen (the inbox on "
            "the API listener verifies each result's signature on receipt), taking turns",
            baseline=eager,
            note=f"{_co_located(network, sides[EAGER_INBOX].placement)} of the {edges} edges "
            "co-located in the baseline cluster",
        )
    )
    for whole_label, piped_label in PIPELINED_SIDES.items():
        whole = harness.Stats.of(sides[whole_label].windows)
        piped = harness.Stats.of(sides[piped_label].windows)
        piped_walls = sides[piped_label].walls
        report.compare(
            harness.Comparison(
                name=f"training samples/s, {MICRO_BATCHES} micro-batches a step vs whole "
                f"batches, {whole_label}",
                unit="samples/s",
                measured=piped,
                baseline_name="the same cluster's job with whole batches (micro_batches 1), "
                "run just before it in every round",
                baseline=whole,
                note=f"batch {BATCH} cut into {MICRO_BATCHES} parts of {BATCH // MICRO_BATCHES} "
                "in flight together, the same final weights (tests/integration/"
                f"test_training.py); {_co_located(network, sides[whole_label].placement)} of "
                f"the {edges} edges co-located, placement {sides[whole_label].placement}; "
                f"{piped.p50 / baseline.p50:.3f}x of the reference (whole batches "
                f"{whole.p50 / baseline.p50:.3f}x); Train->Succeeded wall per job "
                f"{min(piped_walls):.2f}-{max(piped_walls):.2f}s (whole batches "
                f"{min(sides[whole_label].walls):.2f}-{max(sides[whole_label].walls):.2f}s)",
            )
        )
    for figure in per_hop:
        report.compare(figure)
    if contended:
        report.notes.append(
            f"CONTENDED: the reference's per-epoch rates spread {spread(single):.2f}x "
            f"(p90/p10), above the bound of {SPREAD_BOUND}: the machine was busy with other "
            "work, so the ratio is not evaluated against its targets."
        )
    report.extra["distributed_steps_per_second_p50"] = measured.p50 / BATCH
    report.extra["reference_steps_per_second_p50"] = baseline.p50 / BATCH
    report.extra["reference_spread_p90_p10"] = spread(single)
    report.extra["job_wall_seconds"] = walls
    return report


def _reference(manifest: Path, rounds_done: int, epochs: int) -> list[float]:
    """Samples/s of each epoch of a fresh reference subprocess (the environment as is)."""
    argv = [sys.executable, "-m", "benchmarks.training", "reference", "--manifest", str(manifest),
            "--first-epoch", str(rounds_done * epochs), "--epochs", str(epochs)]  # fmt: skip
    out = subprocess.run(
        argv, capture_output=True, text=True, cwd=harness.REPO, timeout=600, check=True
    )
    rates = json.loads(out.stdout)
    if not isinstance(rates, list) or len(rates) != epochs:
        raise AssertionError(f"reference subprocess printed {out.stdout!r}")
    return [float(r) for r in rates]


def reference_rates(manifest: Path, first_epoch: int, epochs: int) -> list[float]:
    """Samples/s of each of `epochs` epochs of the reference on the network in `manifest`
    (relative data URLs resolve against the repository, as the agents' --workdir)."""
    network = network_model.Network.model_validate(yaml.safe_load(manifest.read_text()))
    single = reference.Reference(
        network, seed=SEED, optimizer=OPTIMIZER, learning_rate=LEARNING_RATE,
        workdir=agents.REPO,
    )  # fmt: skip
    source = next(single.kinds[v.name] for v in network.spec.vnodes if v.data is not None)
    if source.data is None:
        raise AssertionError("the network's data source has no data")
    rows = len(source.data.array(str(source.params.get("field", ""))))
    single.train_step(np.arange(BATCH))  # parameters initialized, data read: not measured
    single.init()
    rates = []
    for epoch in range(first_epoch, first_epoch + epochs):
        t0 = time.perf_counter()
        for indices in reference.batches(SEED, epoch, rows, BATCH):
            single.train_step(np.asarray(indices))
        rates.append(rows / (time.perf_counter() - t0))
    return rates


def _kill(fleet: list[agents.Agent]) -> None:
    """Teardown is not measured; a graceful stop would drain."""
    for agent in fleet:
        agent.kill()


def _co_located(network: network_model.Network, placement: dict[str, str]) -> int:
    """How many edges join two VNodes placed on the same PNode."""
    return sum(
        placement.get(parent) == placement.get(v.name)
        for v in network.spec.vnodes
        for parent in dict.fromkeys(v.inputs)
    )


@dataclass
class Side:
    """One cluster's measurements."""

    windows: list[float]
    walls: list[float]
    placement: dict[str, str]
    job: job_model.Job | None = None


async def interleaved(
    ctx: harness.Context,
    size: Size,
    steps: int,
    manifest_file: Path,
    clusters: Sequence[str] = CLUSTERS,
    *,
    pipelined: bool = True,
) -> tuple[dict[str, Side], list[float]]:
    """Per cluster (IN_PROCESS, ALL_GRPC) its measurements, and the reference epochs'
    samples/s; the clusters are up together and take turns with the reference. `pipelined`:
    the clusters of PIPELINED_SIDES also run each round's job with MICRO_BATCHES
    micro-batches, measured as that side."""
    manifest = yaml.safe_load(await asyncio.to_thread(manifest_file.read_text))
    network = network_model.Network.model_validate(manifest)
    single: list[float] = []
    sides: dict[str, Side] = {}
    with contextlib.ExitStack() as stack:
        clients = []
        for label in clusters:
            extra = AGENT_FLAGS.get(label, ())
            root = ctx.workdir / network.name / label.replace(" ", "-")
            url = f"sqlite:///{root / 'state.db'}"
            log = root / "orchestrator.log"
            serve = (() if label == EAGER_INBOX else DRIVER_LISTEN) + SERVE_FLAGS.get(label, ())
            served = stack.enter_context(
                procs.orchestrator(url, extra=serve, log=log, log_level="warning")
            )
            count = 1 if label == ONE_AGENT else 3
            cpu = SPREAD_CPU if label == SPREAD else "2"
            fleet = stack.enter_context(
                agents.agents(served.address, root, count, cpu=cpu, memory="2Gi", extra=extra)
            )
            stack.callback(_kill, fleet)
            clients.append((label, cluster.Api(served.address), training_e2e.Jobs(served.address)))
        try:
            for label, api, _jobs in clients:
                await api.apply(manifest)
                every = {v.name: 1 for v in network.spec.vnodes}
                await api.wait_resolvable(network.name, every, within=60)
                where = await api.endpoints(network.name, list(every))
                sides[label] = Side([], [], {v: e[0][0] for v, e in where.items()})
                if label in PIPELINED_SIDES and pipelined:
                    sides[PIPELINED_SIDES[label]] = Side([], [], sides[label].placement)
            for r in range(size.rounds):
                ctx.log(f"training: round {r + 1}/{size.rounds}: reference")
                single += await asyncio.to_thread(
                    _reference, manifest_file, r, size.epochs_per_round
                )
                for label, _api, jobs in clients:
                    ctx.log(f"training: round {r + 1}/{size.rounds}: three agents, {label}")
                    found, wall, job = await _job(jobs, network.name, f"bench-{r}", size, steps)
                    sides[label].windows += found
                    sides[label].walls.append(wall)
                    sides[label].job = job
                    if label not in PIPELINED_SIDES or not pipelined:
                        continue
                    piped = PIPELINED_SIDES[label]
                    ctx.log(f"training: round {r + 1}/{size.rounds}: {piped}")
                    found, wall, job = await _job(
                        jobs, network.name, f"bench-{r}-piped", size, steps,
                        micro_batches=MICRO_BATCHES,
                    )  # fmt: skip
                    sides[piped].windows += found
                    sides[piped].walls.append(wall)
                    sides[piped].job = job
        finally:
            for _label, api, jobs in clients:
                await api.close()
                await jobs.channel.close(None)
    return sides, single


async def _job(
    jobs: training_e2e.Jobs,
    network: str,
    name: str,
    size: Size,
    steps: int,
    *,
    micro_batches: int = 0,
) -> tuple[list[float], float, job_model.Job]:
    request = job_pb2.TrainRequest(
        header=cluster.HEADER, name=name, network=network, epochs=size.epochs_per_round,
        batch_size=BATCH, optimizer=OPTIMIZER, learning_rate=LEARNING_RATE, seed=SEED,
        checkpoint_interval=steps, micro_batches=micro_batches,
    )  # fmt: skip
    started = time.perf_counter()
    await jobs.stub.Train(request, timeout=30)
    windows: dict[int, float] = {}
    deadline = time.monotonic() + 600
    while True:
        job = await jobs.get(name)
        status = job.status
        if status.samples_per_second and status.phase in ("Running", "Succeeded"):
            windows[status.step] = status.samples_per_second
        if status.phase == "Succeeded":
            break
        if status.phase in ("Failed", "Cancelled") or time.monotonic() > deadline:
            raise AssertionError(f"training job ended {status.phase}: {status.message}")
        await asyncio.sleep(0.05)  # polling a condition with a deadline
    if status.attempt > 1:
        raise AssertionError(f"training job {name} needed {status.attempt} attempts")
    return list(windows.values()), time.perf_counter() - started, job


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.training")
    parser.add_argument("command", choices=["reference"])
    parser.add_argument("--manifest", type=Path, default=training_e2e.MANIFEST)
    parser.add_argument("--first-epoch", type=int, default=0)
    parser.add_argument("--epochs", type=int, required=True)
    args = parser.parse_args()
    print(json.dumps(reference_rates(args.manifest, args.first_epoch, args.epochs)))


if __name__ == "__main__":
    main()
