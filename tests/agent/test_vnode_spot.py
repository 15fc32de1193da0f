"""Spot checks in the VNode state machine (`agent.vnode.Instance`, no sockets): for a VNode
named in a request's spot_check, replica 0 computes and also sends its output to replica 1;
replica 1 proves it against the inputs it received (dense: Freivalds') and sends it on as
its own result, or, when the proof fails or the kind has none, its own recomputation, so
the children compare as for a double check. Parents and children treat it as double-checked.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from agent import vnode
from tests.agent.test_vnode_quorum import STEP, X, dense_reference, make, msg, targets

SPOT: dict[str, Any] = {"adaptive": True, "spot_check": ("h",)}


def _claim(array: np.ndarray, **over: Any) -> vnode.Message:
    """Replica 0 of h's output, sent to its checker."""
    return msg("h", over.pop("replica", 0), array, **{**SPOT, **over})


def test_replica_0_computes_and_sends_its_output_to_the_children_and_its_checker() -> None:
    h = make({"a": 1, "b": 1})
    received = h.receive(msg("a", 0, X, **SPOT))
    assert targets(received) == [("b", 0), ("h", vnode.CHECKER)]
    _, expected, _ = dense_reference(X)
    for o in received.outgoing:
        assert (o.adaptive, o.spot_check, o.double_check) == (True, ("h",), ())
        assert o.array is not None
        np.testing.assert_allclose(o.array, expected, rtol=1e-6)
    assert received.spot == ""  # replica 0 checks nothing


@pytest.mark.parametrize("claim_first", [False, True])
def test_the_checker_passes_an_honest_output_on_as_its_own(claim_first: bool) -> None:
    checker = make({"a": 1, "b": 2}, replica=vnode.CHECKER)
    _, honest, _ = dense_reference(X)
    claim, inputs = _claim(honest), msg("a", 0, X, **SPOT)
    first, second = (claim, inputs) if claim_first else (inputs, claim)
    waited = checker.receive(first)
    assert waited.outgoing == []
    assert waited.spot == ""
    done = checker.receive(second)
    assert done.spot == "passed"
    assert targets(done) == [("b", 0)]  # b is not checked: its replica 0 alone computes
    for o in done.outgoing:
        assert o.array is not None
        np.testing.assert_array_equal(o.array, honest)  # the very bytes replica 0 sent
    assert checker.receive(second).duplicate


def test_a_slight_lie_fails_and_the_checker_sends_its_own_result() -> None:
    checker = make({"a": 1, "b": 1}, replica=vnode.CHECKER)
    _, honest, _ = dense_reference(X)
    checker.receive(_claim((honest * np.float32(1.01)).astype(honest.dtype)))
    done = checker.receive(msg("a", 0, X, **SPOT))
    assert done.spot == "failed"
    (o,) = done.outgoing
    assert o.array is not None
    np.testing.assert_allclose(o.array, honest, rtol=1e-6)


@pytest.mark.parametrize("bad", ["nan", "shape"])
def test_a_claim_failing_the_result_checks_fails_the_spot_check(bad: str) -> None:
    """The agent does not run the result checks on a claim (its checker is no neighbour to
    report to): the spot check refuses it as it refuses any wrong result."""
    checker = make({"a": 1, "b": 1}, replica=vnode.CHECKER)
    _, honest, _ = dense_reference(X)
    claim = honest.copy()
    if bad == "nan":
        claim[0, 0] = np.nan
    else:
        claim = claim[:, :1].copy()
    checker.receive(_claim(claim))
    done = checker.receive(msg("a", 0, X, **SPOT))
    assert done.spot == "failed"
    (o,) = done.outgoing
    assert o.array is not None
    np.testing.assert_allclose(o.array, honest, rtol=1e-6)


def test_a_kind_without_a_cheaper_proof_is_recomputed() -> None:
    checker = make({"a": 1, "b": 1}, kind="relu", replica=vnode.CHECKER)
    checker.receive(_claim(X))
    done = checker.receive(msg("a", 0, X, **SPOT))
    assert done.spot == "recomputed"
    (o,) = done.outgoing
    assert o.array is not None
    np.testing.assert_array_equal(o.array, np.maximum(X, 0))


@pytest.mark.parametrize(
    ("over", "me"),
    [
        ({"replica": 1}, vnode.CHECKER),  # only replica 0's output is a claim
        ({"spot_check": ()}, vnode.CHECKER),  # not a spot-checked request
        ({}, 0),  # replica 0 is not the checker
        ({"position": STEP}, vnode.CHECKER),  # training is never spot-checked
    ],
)
def test_a_vnode_takes_its_own_output_only_as_a_spot_checks_claim(
    over: dict[str, Any], me: int
) -> None:
    h = make({"a": 1, "b": 1}, replica=me)
    with pytest.raises(vnode.Refused) as refused:
        h.receive(_claim(X, **over))
    assert refused.value.reason == "Invalid"


def test_a_child_expects_every_replica_of_a_spot_checked_parent_and_compares_them() -> None:
    child = make({"a": 2, "b": 1})  # h's child here is the instance; "a" is spot-checked
    flags: dict[str, Any] = {"adaptive": True, "spot_check": ("a",)}
    assert child.receive(msg("a", 0, X, **flags)).outgoing == []
    _, expected, _ = dense_reference(X)
    done = child.receive(msg("a", 1, X.copy(), **flags))
    assert done.findings == []
    assert targets(done) == [("b", 0)]
    lie = make({"a": 2, "b": 1})
    lie.receive(msg("a", 0, X * np.float32(1.01), **flags))
    disputed = lie.receive(msg("a", 1, X, **flags))
    (finding,) = disputed.findings
    assert finding.disputed
    assert finding.subject_vnode == "a"
    assert np.allclose(done.outgoing[0].array, expected, rtol=1e-6)  # type: ignore[arg-type]


def test_the_random_vectors_come_from_the_generator_given() -> None:
    drawn: list[int] = []

    def rng() -> np.random.Generator:
        drawn.append(1)
        return np.random.default_rng(0)

    checker = vnode.Instance(
        network="net",
        vnode="h",
        replica=vnode.CHECKER,
        epoch=4,
        kind=make().kind,
        parents=["a"],
        children=["b"],
        spot_rng=rng,
    )
    _, honest, _ = dense_reference(X)
    checker.receive(_claim(honest, target_epoch=4))
    assert checker.receive(msg("a", 0, X, **SPOT)).spot == "passed"
    assert drawn == [1]
