"""A lying PNode for tests: the real `dcnr-agent`, with every kind's forward output
perturbed for a configured fraction of results. Test-only; nothing here ships.

    python -m tests.support.liar --lie-fraction 1.0 --lie-mode slight|gross|nan \\
        [--lie-seed N] [--lie-log PATH] [--lie-kinds dense,relu] AGENT FLAGS...

slight: every value * 1.01 (passes every check; only a comparison catches it);
gross: every value + 5 (breaks softmax sums, relu and loss ranges only by luck of sign);
nan: the first value becomes NaN (every consumer's finiteness check catches it).
Integer outputs (an input's labels or indices) are left alone: lying about them would
only make the data wrong, which is the same lie one layer later. `--lie-log` appends one
line per lie told ("KIND training|inference"), so a test can count the lies and check that
none got through. `--lie-kinds`: lie only in these kinds' outputs (default: every kind).
"""

from __future__ import annotations

import argparse
import random
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from agent import main as agent_main
from agent.runtime import kinds

MODES = ("slight", "gross", "nan")


def perturb(array: np.ndarray, mode: str) -> np.ndarray:
    if not np.issubdtype(array.dtype, np.floating) or array.size == 0:
        return array
    if mode == "slight":
        return (array * 1.01).astype(array.dtype)
    if mode == "gross":
        return (array + 5).astype(array.dtype)
    lied = array.astype(array.dtype, copy=True)
    lied.flat[0] = np.nan
    return lied


def lies_told(log: Path, *, phase: str = "") -> int:
    """Lies a `--lie-log` file records (only those told in `phase`, "training" or
    "inference", when given); 0 before the first."""
    if not log.exists():
        return 0
    return sum(1 for line in log.read_text().splitlines() if line.endswith(phase))


def install(
    *, fraction: float, mode: str, seed: int, log: str = "", only: Sequence[str] = ()
) -> None:
    """Wrap the forward of every built-in kind (or those named in `only`) so a `fraction`
    of outputs lie."""
    if mode not in MODES:
        raise ValueError(f"--lie-mode: {mode!r} must be one of {', '.join(MODES)}")
    unknown = sorted(set(only) - set(kinds.known_kinds()))
    if unknown:
        raise ValueError(f"--lie-kinds: {unknown[0]!r} is not a kind: {kinds.known_kinds()}")
    rng = random.Random(seed)
    for name in only or kinds.known_kinds():
        cls = kinds.kind_class(name)
        original = cls.forward

        def forward(
            self: kinds.Kind,
            inputs: Sequence[np.ndarray],
            params: Mapping[str, np.ndarray],
            *,
            training: bool,
            _original: Any = original,
        ) -> tuple[np.ndarray, Any]:
            output, cache = _original(self, inputs, params, training=training)
            if rng.random() < fraction:
                lied = perturb(output, mode)
                if log and lied is not output:
                    with open(log, "a") as f:
                        f.write(f"{self.name} {'training' if training else 'inference'}\n")
                output = lied
            return output, cache

        cls.forward = forward  # type: ignore[method-assign]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="liar", add_help=False)
    parser.add_argument("--lie-fraction", type=float, default=1.0)
    parser.add_argument("--lie-mode", choices=MODES, default="slight")
    parser.add_argument("--lie-seed", type=int, default=0)
    parser.add_argument("--lie-log", default="")
    parser.add_argument("--lie-kinds", default="")
    ours, rest = parser.parse_known_args(argv)
    install(
        fraction=ours.lie_fraction,
        mode=ours.lie_mode,
        seed=ours.lie_seed,
        log=ours.lie_log,
        only=[k for k in ours.lie_kinds.split(",") if k],
    )
    return agent_main.main(rest)


if __name__ == "__main__":
    sys.exit(main())
