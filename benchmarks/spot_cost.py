"""What a check costs, per VNode, in CPU seconds: the frontier's compute (`benchmarks.frontier`).

For each VNode of a network that computes (sources read data and are left out), the CPU
time of one inference forward pass of its kind (what a replica's recomputation costs) and
of the checker's work under a spot check (`Kind.spot_check`, dense: Freivalds' check, on
the claim and the inputs), both as the agent runs them (`agent.runtime` kinds, float32
activations, float64 weights), measured with `time.process_time` (every thread of the
process, so BLAS threads count), the median of `repeats` rounds of `calls` calls each,
interleaved so that load on a shared machine falls on both alike. A kind without a cheaper
proof pays a replica: its check costs its forward pass.

Two networks: `digits` (examples/digits: 64 -> dense 32 -> relu -> dense 10 -> softmax
loss, a batch of 64 rows as `dcnctl infer` sends) and `wide` (benchmarks/wide.py: 256 ->
4 x (dense 1024 -> relu) -> dense 10 -> loss, batch 256).

`measured` runs it in a fresh process with BLAS pinned to one thread (OPENBLAS, OMP and
MKL thread counts 1, as `benchmarks.training` pins them): CPU seconds of one core's work,
not of threads spinning on a shared machine.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

import numpy as np

from agent.runtime import kinds
from agent.runtime import layers as _layers  # noqa: F401  (registers the built-in kinds)
from agent.runtime import losses as _losses  # noqa: F401
from api import kinds as api_kinds


@dataclasses.dataclass(frozen=True, slots=True)
class Layer:
    name: str
    kind: str
    params: dict[str, int]


@dataclasses.dataclass(frozen=True, slots=True)
class Cost:
    """One VNode's CPU seconds per request: computing it, and checking it (a spot check
    where its kind has one, else a replica's recomputation)."""

    name: str
    kind: str
    compute: float
    check: float
    spot: bool
    #: Whether the driver's `spotCheck: auto` spot-checks it at these shapes
    #: (`api.kinds.spot_pays`), else a replica recomputes it.
    pays: bool = False

    @property
    def ratio(self) -> float:
        return self.check / self.compute if self.compute > 0 else 1.0


NETWORKS: dict[str, tuple[int, int, tuple[Layer, ...]]] = {
    "digits": (
        64,
        64,
        (
            Layer("fc1", "dense", {"units": 32}),
            Layer("act1", "relu", {}),
            Layer("fc2", "dense", {"units": 10}),
            Layer("loss", "softmax_cross_entropy", {}),
        ),
    ),
    "wide": (
        256,
        256,
        (
            *(
                layer
                for i in range(1, 5)
                for layer in (
                    Layer(f"fc{i}", "dense", {"units": 1024}),
                    Layer(f"act{i}", "relu", {}),
                )
            ),
            Layer("out", "dense", {"units": 10}),
            Layer("loss", "softmax_cross_entropy", {}),
        ),
    ),
}


def _cpu(call: Callable[[], object], calls: int) -> float:
    started = time.process_time()
    for _ in range(calls):
        call()
    return (time.process_time() - started) / calls


def measure(network: str, *, repeats: int = 7, seed: int = 0) -> list[Cost]:
    """The costs of `network`'s computing VNodes (module docstring)."""
    batch, features, layers = NETWORKS[network]
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, features)).astype(np.float32)
    labels = rng.integers(0, 10, size=batch)
    found = []
    for layer in layers:
        kind = kinds.kind_class(layer.kind)(layer.params)
        inputs: list[np.ndarray] = [x, labels] if kind.is_loss else [x]
        params = kind.init_params(rng, [a.shape for a in inputs])
        y, _ = kind.forward(inputs, params, training=False)
        checker = np.random.default_rng(seed + 1)

        forward = functools.partial(kind.forward, inputs, params, training=False)
        spot = functools.partial(kind.spot_check, inputs, params, y, checker)
        cheap = kind.spot_check(inputs, params, y, checker) is not None
        # Enough calls per round for the process clock's resolution (a few ms).
        once = max(_cpu(forward, 3), 1e-6)
        calls = max(3, min(2000, int(0.05 / once)))
        computes, checks = [], []
        for _ in range(repeats):
            computes.append(_cpu(forward, calls))
            checks.append(_cpu(spot, calls) if cheap else computes[-1])
        compute = statistics.median(computes)
        found.append(
            Cost(
                layer.name,
                layer.kind,
                compute,
                statistics.median(checks) if cheap else compute,
                cheap,
                api_kinds.spot_pays(layer.kind, x.shape, y.shape),
            )
        )
        if not kind.is_loss:
            x = np.asarray(y, dtype=np.float32)
    return found


BLAS_PINNED = {name: "1" for name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")}


def measured(network: str) -> list[Cost]:
    """`measure(network)` in a fresh process with BLAS on one thread (module docstring)."""
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.spot_cost", network],
        env={**os.environ, **BLAS_PINNED},
        check=True,
        capture_output=True,
        text=True,
    )
    return [Cost(**c) for c in json.loads(done.stdout)]


if __name__ == "__main__":
    print(json.dumps([dataclasses.asdict(c) for c in measure(sys.argv[1])]))
