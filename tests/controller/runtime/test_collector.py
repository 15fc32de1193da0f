"""The orchestrator's collector thresholds (issue 13): applied, reported, and refused when
they make no sense. Each test restores the process's thresholds: they are process-wide."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from controller.runtime import collector


@pytest.fixture(autouse=True)
def restore_thresholds() -> Iterator[None]:
    before = gc.get_threshold()
    yield
    gc.set_threshold(*before)


def test_tune_applies_the_thresholds_and_returns_the_previous_ones() -> None:
    gc.set_threshold(700, 10, 10)
    previous = collector.tune()
    assert previous == (700, 10, 10)
    assert gc.get_threshold() == collector.THRESHOLDS
    assert collector.tune((1000, 5, 5)) == collector.THRESHOLDS
    assert gc.get_threshold() == (1000, 5, 5)


def test_every_generation_stays_collected() -> None:
    """Less often, never off: a zero threshold would disable the collector."""
    assert all(isinstance(t, int) and t >= 1 for t in collector.THRESHOLDS)
    assert collector.THRESHOLDS[0] > 700, "no less often than CPython's default"


def test_full_collections_stay_rare_and_young_ones_small() -> None:
    """A full collection walks every record the informers hold: considered no more often
    than every 10 million net allocations (what placement was measured with). A young one
    holds the event loop while it walks: the middle generation, at most what 10,000 net
    allocations leave, stays a pause of milliseconds (the `ingest` scenario's tail)."""
    young, middle, old = collector.THRESHOLDS
    assert young * middle * old >= 10_000_000
    assert young * middle <= 10_000


@pytest.mark.parametrize(
    ("thresholds", "message"),
    [
        ((0, 10, 10), "generation 0 = 0 is invalid; must be an integer >= 1"),
        ((700, 2.5, 10), "generation 1 = 2.5 is invalid; must be an integer >= 1"),
        ((700, 10, True), "generation 2 = True is invalid; must be an integer >= 1"),
    ],
)
def test_bad_thresholds_are_refused_naming_the_generation_and_value(
    thresholds: tuple[int, int, int], message: str
) -> None:
    gc.set_threshold(700, 10, 10)
    with pytest.raises(ValueError, match="gc thresholds: ") as caught:
        collector.tune(thresholds)
    assert message in str(caught.value)
    assert gc.get_threshold() == (700, 10, 10), "a refused setting changes nothing"
