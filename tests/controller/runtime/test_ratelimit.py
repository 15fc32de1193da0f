"""Token buckets on hand-driven time: burst, refill, refusal, and the bounded key table."""

from __future__ import annotations

import pytest

from controller.runtime import ratelimit


def test_a_burst_then_the_rate() -> None:
    buckets = ratelimit.Buckets(ratelimit.Limit(5.0, 20))
    assert [buckets.take("10.0.0.1", 0.0) for _ in range(25)] == [True] * 20 + [False] * 5
    # One second later five more tokens have accrued, and only five.
    assert [buckets.take("10.0.0.1", 1.0) for _ in range(6)] == [True] * 5 + [False]
    # Another address has its own bucket.
    assert buckets.take("10.0.0.2", 1.0)


def test_refill_is_capped_at_the_burst() -> None:
    buckets = ratelimit.Buckets(ratelimit.Limit(1.0, 3))
    for _ in range(3):
        assert buckets.take("k", 0.0)
    assert not buckets.take("k", 0.0)
    taken = [buckets.take("k", 1000.0) for _ in range(5)]
    assert taken == [True, True, True, False, False]


def test_time_going_backwards_grants_nothing() -> None:
    buckets = ratelimit.Buckets(ratelimit.Limit(1.0, 1))
    assert buckets.take("k", 10.0)
    assert not buckets.take("k", 5.0)


def test_rate_zero_is_no_limit_and_keeps_no_state() -> None:
    buckets = ratelimit.Buckets(ratelimit.Limit(0.0, 1))
    assert all(buckets.take(f"k{i}", 0.0) for i in range(1000))
    assert len(buckets) == 0


def test_the_table_never_exceeds_max_keys() -> None:
    buckets = ratelimit.Buckets(ratelimit.Limit(1.0, 2), max_keys=64)
    for i in range(10_000):
        buckets.take(f"addr-{i}", i * 0.001)
        assert len(buckets) <= 64


def test_eviction_keeps_recently_used_indebted_keys_first() -> None:
    buckets = ratelimit.Buckets(ratelimit.Limit(0.001, 1), max_keys=8)
    assert buckets.take("attacker", 0.0)
    assert not buckets.take("attacker", 0.0)
    for i in range(6):
        buckets.take(f"other-{i}", 0.0)
    assert not buckets.take("attacker", 0.0)  # most recently used: survives the next sweep
    buckets.take("other-new", 0.0)
    buckets.take("other-newer", 0.0)
    assert not buckets.take("attacker", 0.0)


def test_full_buckets_are_dropped_first() -> None:
    buckets = ratelimit.Buckets(ratelimit.Limit(1.0, 1), max_keys=4)
    assert buckets.take("old", 0.0)  # empty now, refills by t=1
    for key in ("a", "b", "c"):
        assert buckets.take(key, 10.0)  # empty, refill by t=11
    assert buckets.take("d", 10.0)  # table full: "old" has refilled and is dropped
    assert len(buckets) == 4
    assert not buckets.take("a", 10.0)  # its debt was kept


@pytest.mark.parametrize(
    ("text", "expected"),
    [("5/20", ratelimit.Limit(5.0, 20)), ("0.5/1", ratelimit.Limit(0.5, 1)), ("0", None)],
)
def test_parse(text: str, expected: ratelimit.Limit | None) -> None:
    parsed = ratelimit.Limit.parse(text, "--register-rate")
    if expected is None:
        assert parsed.unlimited
    else:
        assert parsed == expected


@pytest.mark.parametrize("text", ["5", "x/2", "5/0", "-1/3", "inf/3", "5/2.5", ""])
def test_bad_limits_name_the_flag_and_value(text: str) -> None:
    with pytest.raises(ValueError, match=r"--register-rate") as caught:
        ratelimit.Limit.parse(text, "--register-rate")
    assert repr(text) in str(caught.value)


def test_max_keys_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_keys"):
        ratelimit.Buckets(ratelimit.Limit(1.0, 1), max_keys=0)
