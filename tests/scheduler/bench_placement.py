"""Placement throughput: `python -m tests.scheduler.bench_placement [pnodes ...]`.

Not a test (no assertion on time): a quick measurement of `place_all` placing two VNode
replicas per PNode over a heterogeneous cluster, printed as placements per second.
"""

from __future__ import annotations

import random
import sys
import time

from scheduler import config, model, placement

GiB = 2**30


def cluster(size: int, rng: random.Random) -> model.Snapshot:
    nodes = []
    for i in range(size):
        gpus: model.Accelerators = (("a100", rng.choice((1, 2, 4))),) if i % 10 == 0 else ()
        nodes.append(
            model.NodeView(
                name=f"pnode-{i:05d}",
                ready=rng.random() > 0.02,
                schedulable=rng.random() > 0.01,
                bugged=rng.random() < 0.01,
                cpu_capacity=rng.choice((4000, 8000, 16000)),
                memory_capacity=rng.choice((8, 16, 32)) * GiB,
                accelerators=gpus,
                cpu_allocated=rng.choice((0, 0, 1000)),
                memory_allocated=rng.choice((0, 0, 2 * GiB)),
                trust=rng.random(),
                missed_heartbeats=rng.choice((0, 0, 0, 1, 5)),
                evictions=rng.choice((0, 0, 0, 0, 1)),
                datasets=frozenset({"mnist"}) if i % 7 == 0 else frozenset(),
            )
        )
    return model.Snapshot(nodes)


def requests(count: int, rng: random.Random) -> list[model.Request]:
    out = []
    for v in range(count // 2):
        gpu = v % 50 == 0
        for replica in range(2):
            out.append(
                model.Request(
                    network=f"net-{v // 100}",
                    vnode=f"v{v}",
                    replica=replica,
                    cpu=rng.choice((250, 500, 1000)),
                    memory=rng.choice((256, 512, 1024)) * 2**20,
                    accelerator="a100" if gpu else None,
                    accelerator_count=1 if gpu else 0,
                    critical=v % 20 == 0,
                    dataset="mnist" if v % 5 == 0 else None,
                    near=frozenset({f"pnode-{(v * 7) % 1000:05d}"}),
                )
            )
    return out


def measure(
    snapshot: model.Snapshot, batch: list[model.Request], sample_size: int, ordinary: int
) -> None:
    cfg = config.Config(sample_size=sample_size, ordinary_sample_size=ordinary)
    started, cpu_started = time.perf_counter(), time.process_time()
    plan = placement.place_all(batch, snapshot, seed=7, config=cfg)
    elapsed = time.perf_counter() - started
    cpu = time.process_time() - cpu_started
    print(
        f"{len(snapshot):>6} pnodes, {len(batch):>6} requests, sample {sample_size:>3} "
        f"(ordinary {ordinary:>2}): "
        f"{len(batch) / elapsed:>6.0f} placements/s wall, "
        f"{len(batch) / cpu:>6.0f} per cpu-second "
        f"({len(plan.placements)} placed, {len(plan.unschedulable)} unschedulable)"
    )


def main(argv: list[str]) -> None:
    sizes = [int(a) for a in argv] or [1000, 10000]
    for size in sizes:
        rng = random.Random(size)
        snapshot = cluster(size, rng)
        batch = requests(2 * size, rng)
        for ordinary in (32, 16, 8, 4):  # 32: every request scores the critical sample
            measure(snapshot, batch, config.DEFAULT.sample_size, ordinary)
    # Overfull: eight times what fits, so most requests are unschedulable (full scans).
    rng = random.Random(0)
    snapshot = cluster(1000, rng)
    measure(
        snapshot,
        requests(16_000, rng),
        config.DEFAULT.sample_size,
        config.DEFAULT.ordinary_sample_size,
    )


if __name__ == "__main__":
    main(sys.argv[1:])
