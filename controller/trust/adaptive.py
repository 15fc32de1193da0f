"""Adaptive replication (BOINC's, per VNode result rather than per work unit): a result
from a PNode with CV consecutive valid results is double-checked with probability 1/CV once
CV >= ADAPTIVE_MIN_VALID, always before that. No longer what the driver uses (that is
`controller.trust.sampling`): kept as the baseline of the frontier benchmark
(`benchmarks/frontier.py`). Comparison and quorum are `api.quorum`
(agents decide too, and they import only `api`).
"""

from __future__ import annotations

import random
from collections.abc import Sequence

ADAPTIVE_MIN_VALID = 10


def double_check_probability(
    consecutive_valid: int, *, min_valid: int = ADAPTIVE_MIN_VALID
) -> float:
    """BOINC adaptive replication: always check a PNode with fewer than `min_valid`
    consecutive valid results, then with probability 1/CV."""
    if consecutive_valid < max(1, min_valid):
        return 1.0
    return 1.0 / consecutive_valid


def should_double_check(consecutive_valid: int, rng: random.Random) -> bool:
    p = double_check_probability(consecutive_valid)
    return p >= 1.0 or rng.random() < p


def expected_extra_compute(consecutive_valid: Sequence[int]) -> float:
    """The mean fraction of results computed twice, for PNodes at these trust levels."""
    if not consecutive_valid:
        return 0.0
    return sum(double_check_probability(cv) for cv in consecutive_valid) / len(consecutive_valid)
