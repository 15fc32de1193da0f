"""The training benchmark's baseline cannot be flattered: both sides start under the same
pinned BLAS settings, and a reference measured under contention is recognised."""

from __future__ import annotations

import os
import subprocess
import sys

from benchmarks import training


def test_the_spread_check_flags_a_contended_reference() -> None:
    quiet = [100.0, 101.0, 99.0, 102.0, 98.0, 100.0, 103.0, 97.0, 100.0, 101.0]
    busy = [100.0, 30.0, 95.0, 20.0, 100.0, 40.0, 98.0, 25.0, 99.0, 35.0]
    assert training.spread(quiet) <= training.SPREAD_BOUND
    assert training.spread(busy) > training.SPREAD_BOUND
    assert training.spread([10.0, 30.0]) == 3.0  # few samples: max / min


def test_subprocesses_start_with_pinned_threads_and_the_same_coretype() -> None:
    names = [*training.PINNED_THREADS, "OPENBLAS_CORETYPE"]
    before = {name: os.environ.get(name) for name in names}
    with training.pinned_environment() as settings:
        seen = subprocess.run(
            [sys.executable, "-c",
             f"import os; print([os.environ.get(n, '(unset)') for n in {names!r}])"],
            capture_output=True, text=True, check=True,
        ).stdout.strip()  # fmt: skip
    assert seen == str([settings[n] for n in names])
    assert all(settings[n] == "1" for n in training.PINNED_THREADS)
    assert settings["OPENBLAS_CORETYPE"] == (before["OPENBLAS_CORETYPE"] or "(unset)")
    assert {name: os.environ.get(name) for name in names} == before
