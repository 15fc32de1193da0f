"""Answers returned unchecked, remembered per PNode and named when it is caught: bounded,
taken once, and told in one line with the request ids."""

from __future__ import annotations

import datetime as dt

import pytest

from controller.trust import exposure

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def answer(request_id: str, network: str = "digits", vnode: str = "fc1") -> exposure.Unchecked:
    return exposure.Unchecked(network, request_id, vnode, T0)


def test_taken_once_per_pnode() -> None:
    book = exposure.Exposure()
    book.returned("p1", answer("a"))
    book.returned("p1", answer("b", vnode="fc2"))
    book.returned("p2", answer("c"))
    found = book.take("p1")
    assert found == exposure.Exposed("p1", (answer("a"), answer("b", vnode="fc2")), 2)
    assert book.take("p1") is None
    assert book.take("p3") is None
    assert book.take("p2") is not None


def test_bounded_keeps_the_newest_and_counts_all() -> None:
    book = exposure.Exposure(limit=3)
    for i in range(10):
        book.returned("p1", answer(f"r{i}"))
    found = book.take("p1")
    assert found is not None
    assert [a.request_id for a in found.answers] == ["r7", "r8", "r9"]
    assert found.total == 10


def test_message_names_request_ids_by_network_and_counts_the_rest() -> None:
    answers = tuple(answer(f"r{i}", network="b" if i % 2 else "a") for i in range(25))
    found = exposure.Exposed("p1", answers, 40)
    message = found.message()
    assert message.startswith("40 inference answers were returned with its results unchecked")
    assert "a: r0, r2" in message
    assert "b: r1, r3" in message
    assert "r19" in message
    assert "r20" not in message
    assert message.endswith("and 20 more)")
    one = exposure.Exposed("p1", (answer("x", vnode="fc1"), answer("x", vnode="fc2")), 2)
    assert one.message().endswith("(request ids digits: x)")


def test_a_limit_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match="exposure: limit: 0 must be at least 1"):
        exposure.Exposure(limit=0)
