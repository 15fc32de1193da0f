"""Comparing redundant results and deciding which to accept; agents and the driver both
decide, so this lives in `api`. Pure: no I/O, no clock, no randomness.

Comparison. Replicas on different CPUs do not produce bit-identical floats (BLAS kernels,
FMA, summation order differ), so digests of the raw bytes would disagree between honest
PNodes. Digests of values rounded to a grid are no better: two honest values a hair apart
can fall on either side of a bucket boundary, so equal-within-rounding results would still
get different digests now and then — and each time an honest PNode would take a strike.
So consumers compare the tensors themselves, `np.allclose(a, b, rtol, atol)` with the
tolerance scaled to the magnitude of the result: sound across CPUs because the kinds
compute in float64 and honest differences are a few ulps of float32 (~1e-7 relative),
three orders of magnitude below RTOL; a lie smaller than the tolerance is also smaller
than the noise training already tolerates. The cost is that the consumer receives every
replica's tensor, not just a digest; for the small VNodes DCNR runs that is cheaper than a
round of digests followed by a fetch.

Quorum. Results are grouped by agreement (each joins the first group whose first member
it is close to). A group holding a strict majority of the replicas that should report is
accepted; results outside it are the minority and get a strike. No majority yet:
pending while results are missing, disputed once all arrived (e.g. 1-1 with two
replicas) — a tiebreaker must compute a third result; `decide` is then called again with
it, and the majority of three settles it (BOINC's quorum, with a tiebreaker replica
issued only on disagreement).

Adaptive replication (which results get compared at all) is `controller.trust.adaptive`.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Hashable, Mapping
from typing import TypeVar

import numpy as np

RTOL = 1e-4
ATOL = 1e-6
P = TypeVar("P", bound=Hashable)


def agree(a: np.ndarray, b: np.ndarray, *, rtol: float = RTOL, atol: float = ATOL) -> bool:
    """Whether two results of one computation are the same within float tolerance.

    `atol` is relative to the larger magnitude of the two, so the test means the same for
    logits of size 100 as for probabilities; NaN never agrees (checks refuse it first)."""
    if a.shape != b.shape or a.dtype.kind != b.dtype.kind:
        return False
    if a.size == 0:
        return True
    x, y = a.astype(np.float64), b.astype(np.float64)
    if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
        return False
    scale = max(float(np.max(np.abs(x))), float(np.max(np.abs(y))), 1.0)
    return bool(np.allclose(x, y, rtol=rtol, atol=atol * scale))


class Verdict(enum.Enum):
    ACCEPTED = "accepted"
    PENDING = "pending"
    DISPUTED = "disputed"


@dataclasses.dataclass(frozen=True, slots=True)
class Decision:
    verdict: Verdict
    #: The producers whose results form the accepted majority (empty unless ACCEPTED).
    winners: tuple[Hashable, ...] = ()
    #: Producers outside the majority: each gets a strike (empty unless ACCEPTED).
    losers: tuple[Hashable, ...] = ()
    #: One result of the majority, the one to consume.
    accepted: np.ndarray | None = None


def decide(
    results: Mapping[P, np.ndarray],
    *,
    expected: int,
    rtol: float = RTOL,
    atol: float = ATOL,
) -> Decision:
    """Decide on the results that arrived so far (producer → result) out of `expected`.

    A strict majority of `expected` must agree; with expected 1 a single result is accepted
    (nothing to compare: checks are all that guard it)."""
    if expected < 1:
        raise ValueError(f"expected: {expected} must be >= 1")
    groups: list[list[P]] = []
    for producer, value in results.items():
        for group in groups:
            if agree(results[group[0]], value, rtol=rtol, atol=atol):
                group.append(producer)
                break
        else:
            groups.append([producer])
    needed = expected // 2 + 1
    best = max(groups, key=len, default=[])
    if len(best) >= needed:
        losers = tuple(p for g in groups if g is not best for p in g)
        return Decision(Verdict.ACCEPTED, tuple(best), losers, results[best[0]])
    if len(results) < expected:
        return Decision(Verdict.PENDING)
    return Decision(Verdict.DISPUTED)


def tiebreak_needed(decision: Decision) -> int:
    """How many more results would settle a dispute: one more replica makes a strict
    majority possible for the two largest groups of a 1-1 split; 0 if not disputed."""
    return 1 if decision.verdict is Verdict.DISPUTED else 0
