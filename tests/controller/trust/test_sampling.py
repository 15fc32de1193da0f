"""Per-PNode sampling: every rule of `controller.trust.sampling` with a case, the floor held
however trusted a PNode is, suspicion after a strike until it leaves the memory, Uncordon
forgiving, seeded draws at the rate, and bad policies refused by field."""

from __future__ import annotations

import datetime as dt
import random
import re

import pytest

from api.resources import pnode
from controller.trust import book, sampling

_T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
POLICY = sampling.SamplingPolicy(floor=0.1, warmup=10, memory=20)


def trust(valid: int, window: str = "") -> pnode.Trust:
    return pnode.Trust(
        valid_total=valid, consecutive_valid=valid, window=window, strikes=window.count("S")
    )


CASES: list[tuple[str, pnode.Trust, bool, sampling.Reason, float]] = [
    ("new", trust(0), False, "warm-up", 1.0),
    ("almost warm", trust(9, "V" * 9), False, "warm-up", 1.0),
    ("warm", trust(10, "V" * 10), False, "floor", 0.1),
    ("trusted for ages", trust(10**6, "V" * 50), False, "floor", 0.1),
    ("struck recently", trust(500, "V" * 40 + "S" + "V" * 9), False, "suspect", 1.0),
    ("strike at the memory's edge", trust(500, "V" * 30 + "S" + "V" * 19), False, "suspect", 1.0),
    ("strike past the memory", trust(500, "V" * 29 + "S" + "V" * 20), False, "floor", 0.1),
    ("strike held unwritten", trust(500, "V" * 50), True, "suspect", 1.0),
    ("new and struck", trust(2, "VSV"), False, "suspect", 1.0),
]


@pytest.mark.parametrize(
    ("t", "unwritten", "reason", "p"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_rate(t: pnode.Trust, unwritten: bool, reason: sampling.Reason, p: float) -> None:
    assert sampling.rate(t, POLICY, struck_unwritten=unwritten) == sampling.Rate(p, reason)


def test_every_rule_has_a_case() -> None:
    assert {c[3] for c in CASES} == {"suspect", "warm-up", "floor"}


def test_uncordon_forgives_the_window_strikes() -> None:
    t = trust(500, "V" * 45 + "S" + "V" * 4)
    t.strikes = 0  # Uncordon: strikes reset, the window left as it was
    assert sampling.rate(t, POLICY).reason == "floor"


def test_a_lie_makes_the_liar_a_suspect_and_the_strike_ages_out() -> None:
    """Through the real trust book: one strike, then `memory` valid results later it is
    sampled at the floor again."""
    policy = book.TrustPolicy()
    now = book.apply(pnode.Trust(), [book.Outcome(True)] * 30, policy, _T0).trust
    assert sampling.rate(now, POLICY).reason == "floor"
    now = book.apply(now, [book.Outcome(False)], policy, _T0).trust
    assert sampling.rate(now, POLICY).reason == "suspect"
    now = book.apply(now, [book.Outcome(True)] * (POLICY.memory - 1), policy, _T0).trust
    assert sampling.rate(now, POLICY).reason == "suspect"
    now = book.apply(now, [book.Outcome(True)], policy, _T0).trust
    assert sampling.rate(now, POLICY).reason == "floor"


def test_draws_are_seeded_and_at_the_rate() -> None:
    t = trust(1000, "V" * 50)
    first = [sampling.should_check(t, POLICY, random.Random(3)) for _ in range(5)]
    assert len(set(first)) == 1
    rng = random.Random(11)
    n = 20_000
    share = sum(sampling.should_check(t, POLICY, rng) for _ in range(n)) / n
    assert abs(share - 0.1) < 0.01
    assert all(sampling.should_check(trust(0), POLICY, rng) for _ in range(200))


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("floor", 0.0, "floor: 0.0 must be in (0, 1]"),
        ("floor", 1.5, "floor: 1.5 must be in (0, 1]"),
        ("warmup", -1, "warmup: -1 must be in [0, 1000000]"),
        ("memory", 0, "memory: 0 must be in [1, 1000]"),
    ],
)
def test_bad_policies_are_refused_by_field(field: str, value: float, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        sampling.SamplingPolicy(**{field: value})  # type: ignore[arg-type]
