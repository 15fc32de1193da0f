"""Comparison with tolerance, quorum and tiebreak decisions, adaptive probability."""

from __future__ import annotations

import random

import numpy as np
import pytest

from api import quorum as validation
from controller.trust import adaptive

BASE = np.linspace(-3, 3, 60, dtype=np.float32).reshape(6, 10)
# An honest recomputation on another CPU: float32 rounding of a float64 computation whose
# summation order differs, i.e. a relative change of about one ulp.
HONEST = (BASE.astype(np.float64) * (1 + 1e-7)).astype(np.float32)
SLIGHT = BASE * np.float32(1.01)
GROSS = BASE + np.float32(5)


@pytest.mark.parametrize(
    ("a", "b", "same"),
    [
        (BASE, BASE, True),
        (BASE, HONEST, True),
        (BASE, SLIGHT, False),
        (BASE, GROSS, False),
        (BASE, BASE.astype(np.float64), True),  # widths differ, values do not
        (BASE, BASE.reshape(10, 6), False),
        (BASE, np.where(BASE > 0, np.nan, BASE).astype(np.float32), False),
        (np.zeros(0, np.float32), np.zeros(0, np.float32), True),
        (BASE * 1000, BASE * 1000 + 0.001, True),  # tolerance scales with magnitude
        (np.zeros(3), np.full(3, 1e-5), False),  # near zero, atol decides
    ],
    ids=[
        "identical",
        "one ulp",
        "slight lie",
        "gross lie",
        "float64 copy",
        "shape",
        "nan",
        "empty",
        "large magnitude",
        "near zero",
    ],
)
def test_agree(a: np.ndarray, b: np.ndarray, same: bool) -> None:
    assert validation.agree(a, b) is same
    assert validation.agree(b, a) is same


V = validation.Verdict


@pytest.mark.parametrize(
    ("results", "expected", "verdict", "winners", "losers"),
    [
        ({"p1": BASE}, 1, V.ACCEPTED, {"p1"}, set()),
        ({"p1": BASE}, 2, V.PENDING, set(), set()),
        ({"p1": BASE, "p2": HONEST}, 2, V.ACCEPTED, {"p1", "p2"}, set()),
        ({"p1": BASE, "p2": SLIGHT}, 2, V.DISPUTED, set(), set()),
        # The tiebreaker's result joins: majority of three.
        ({"p1": BASE, "p2": SLIGHT, "p3": HONEST}, 3, V.ACCEPTED, {"p1", "p3"}, {"p2"}),
        ({"p1": SLIGHT, "p2": BASE, "p3": HONEST}, 3, V.ACCEPTED, {"p2", "p3"}, {"p1"}),
        ({"p1": BASE, "p2": SLIGHT, "p3": GROSS}, 3, V.DISPUTED, set(), set()),
        ({"p1": BASE, "p2": HONEST}, 3, V.ACCEPTED, {"p1", "p2"}, set()),  # 2 of 3 suffice
        ({"p1": BASE, "p2": GROSS}, 3, V.PENDING, set(), set()),
        ({"p1": BASE, "p2": BASE, "p3": GROSS, "p4": GROSS}, 4, V.DISPUTED, set(), set()),
    ],
)
def test_decide(
    results: dict[str, np.ndarray],
    expected: int,
    verdict: validation.Verdict,
    winners: set[str],
    losers: set[str],
) -> None:
    decision = validation.decide(results, expected=expected)
    assert decision.verdict is verdict
    assert set(decision.winners) == winners
    assert set(decision.losers) == losers
    if verdict is V.ACCEPTED:
        assert decision.accepted is not None
        assert validation.agree(decision.accepted, results[next(iter(winners))])
    assert validation.tiebreak_needed(decision) == (1 if verdict is V.DISPUTED else 0)


def test_decide_refuses_no_replicas() -> None:
    with pytest.raises(ValueError, match="expected: 0"):
        validation.decide({}, expected=0)


@pytest.mark.parametrize(
    ("cv", "p"), [(0, 1.0), (5, 1.0), (9, 1.0), (10, 0.1), (20, 0.05), (1000, 0.001)]
)
def test_double_check_probability(cv: int, p: float) -> None:
    assert adaptive.double_check_probability(cv) == pytest.approx(p)


def test_adaptive_sampling_is_seeded_and_matches_probability() -> None:
    draws = [adaptive.should_double_check(40, random.Random(7)) for _ in range(3)]
    assert len(set(draws)) == 1  # same seed, same answer
    rng = random.Random(1)
    rate = sum(adaptive.should_double_check(40, rng) for _ in range(20_000)) / 20_000
    assert abs(rate - 1 / 40) < 0.005
    assert all(adaptive.should_double_check(3, rng) for _ in range(100))


def test_expected_extra_compute() -> None:
    assert adaptive.expected_extra_compute([]) == 0.0
    assert adaptive.expected_extra_compute([0, 100]) == pytest.approx((1 + 0.01) / 2)
