"""Spot checks: proving a claimed result right for less than recomputing it. Pure: the
random vectors come from the generator the caller passes (the agent draws it from OS
entropy after the claim has arrived, so the producer cannot predict it).

Dense (y = x @ W + b over the last axis, x [b, n], W [n, m]): Freivalds' randomized check.
For `rounds` random vectors r (the columns of R [m, k], standard normal), a correct y
satisfies y @ R == x @ (W @ R) + b @ R. That costs O(k (b m + n m + b n)) multiply-adds
instead of the b n m of recomputation. A wrong y (any error matrix E != 0) passes only if
E @ R is zero or within the tolerance: for real normal r, E r = 0 has probability zero for
any nonzero row of E, so what passes is what is below the tolerance.

The tolerance is an elementwise bound on honest float error, not a guess: the producer
computes in float64 and rounds once to the output dtype (agent.runtime.layers.Dense), so
each y[i, j] carries a relative rounding error of at most u_out (2^-24 float32, 2^-53
float64), and each float64 dot product of length L carries at most L * 2^-53 relative to
the sum of the absolute products (Higham's gamma_L). Per row i and round c:

    |y @ R - x @ (W @ R) - b @ R|[i, c] <= 2 u_out * (|y| @ |R|)[i, c]
        + SLACK * (n + m + 2) * 2^-53 * ((|x| @ rowsum|W|)[i] * max|R[:, c]| + (|b| @ |R|)[c]
                                          + (|y| @ |R|)[i, c])

(rowsum|W| * max|r| bounds |W| @ |r| from above; the dense kind keeps rowsum|W| per weights,
so a check reads W once.)

with SLACK = 4 covering both sides' float64 sums and the bound's own rounding, and the
factor 2 on u_out the case where one output column carries the whole sum (m = 1: the
rounding alone reaches u_out exactly; measured, 0.92 of u_out over 400 random cases). So an
honest result never fails (tests/agent/test_spot.py draws many shapes, scales and dtypes);
a lie passes only if it is below about 1e-7 relative (float32), far under what the
replica comparison (`api.quorum`, rtol 1e-4) would call a disagreement anyway.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

#: How many random vectors a spot check uses. One already catches any error above the
#: tolerance with probability one in exact arithmetic; a second costs little and covers
#: the (measure-zero, but float) chance that an error lies orthogonal to the first.
ROUNDS = 2
SLACK = 4.0
_U64 = 2.0**-53


@dataclasses.dataclass(frozen=True, slots=True)
class Verdict:
    passed: bool
    #: The largest |residual| / tolerance over rows and rounds (< 1 passes): how far from
    #: failing, for logs and tests.
    worst: float


def unit_roundoff(dtype: np.dtype[Any]) -> float:
    """Half the gap between 1 and the next float of `dtype` (the rounding of one value)."""
    return float(np.finfo(dtype).eps) / 2 if np.issubdtype(dtype, np.floating) else 0.0


def row_sums(w: np.ndarray) -> np.ndarray:
    """Sum over each row of |W|: what `dense` bounds |W| @ |r| with (times max |r|). A
    pass over W, which a caller holding the same weights may keep (`Dense.spot_check`)."""
    rows: np.ndarray = np.abs(w).sum(axis=1)
    return rows


def dense(
    x: np.ndarray,
    w: np.ndarray,
    b: np.ndarray,
    y: np.ndarray,
    rng: np.random.Generator,
    *,
    rounds: int = ROUNDS,
    w_rows: np.ndarray | None = None,
) -> Verdict:
    """Whether `y` is x @ w + b (over the last axis, as the dense kind computes it), by
    Freivalds' check with `rounds` normal vectors. Shapes must already agree (the caller
    has checked x against W; `y` was checked by the result checks): a mismatch fails.
    `w_rows`: `row_sums(w)`, if the caller keeps it (else computed here)."""
    n, m = w.shape
    if x.shape[-1:] != (n,) or y.shape != (*x.shape[:-1], m) or b.shape != (m,):
        return Verdict(False, float("inf"))
    x64 = np.asarray(x, dtype=np.float64).reshape(-1, n)
    y64 = np.asarray(y, dtype=np.float64).reshape(-1, m)
    if not (np.isfinite(y64).all() and np.isfinite(x64).all()):
        return Verdict(False, float("inf"))
    r = rng.standard_normal((m, rounds))
    residual = y64 @ r - x64 @ (w @ r) - b @ r
    r_abs = np.abs(r)
    y_scale = np.abs(y64) @ r_abs
    # (|W| @ |r|)[l] <= row_sums(W)[l] * max |r|: looser than the product, one pass fewer.
    rows = row_sums(w) if w_rows is None else w_rows
    x_scale = (np.abs(x64) @ rows)[:, None] * r_abs.max(axis=0) + np.abs(b) @ r_abs
    tolerance = 2 * unit_roundoff(y.dtype) * y_scale + SLACK * (n + m + 2) * _U64 * (
        x_scale + y_scale
    )
    tolerance = np.maximum(tolerance, np.finfo(np.float64).tiny)
    ratio = np.abs(residual) / tolerance
    worst = float(ratio.max()) if ratio.size else 0.0
    return Verdict(worst <= 1.0, worst)
