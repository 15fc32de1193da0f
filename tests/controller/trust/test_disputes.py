"""controller.trust.disputes: a disputed result judged by the majority that settled the same
inputs with a tiebreaker. Real signatures from a test identity CA; VNode `a` ran on replicas
0 (p0) and 1 (p1), disputed; the retry added replica 2 (p2)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from api.dcnr.v1 import common_pb2
from controller.trust import disputes
from tests.support import evidence as signed_support

NOW = signed_support.NOW
HONEST = np.array([[1.0, 2.0]], dtype=np.float32)
LIE = (HONEST * 1.01).astype(np.float32)
#: (vnode, replica) -> (pnode, epoch)
PLACED = {("a", 0): ("p0", 1), ("a", 1): ("p1", 3), ("a", 2): ("p2", 1)}
INPUTS = ("in-digest", (("up/0", 4), ("up/1", 2)))


@pytest.fixture(scope="module")
def ids() -> signed_support.Identities:
    return signed_support.Identities(["p0", "p1", "p2"])


def hosts(vnode: str, replica: int) -> tuple[str, int] | None:
    return PLACED.get((vnode, replica))


def signed(
    ids: signed_support.Identities,
    replica: int,
    array: np.ndarray,
    *,
    request_id: str,
    key_of: str | None = None,
) -> common_pb2.SignedMessage:
    pnode, epoch = PLACED[("a", replica)]
    request = signed_support.forward(array, sender=("a", replica, epoch), target=("b", 0, 1))
    request.request_id = request_id
    return ids.sign(pnode, request, key_of=key_of)


def attempt(
    ids: signed_support.Identities,
    position: str,
    arrays: dict[int, np.ndarray],
    *,
    inputs: object = INPUTS,
    evidence: list[common_pb2.SignedMessage] | None = None,
) -> disputes.Attempt:
    messages = evidence or [signed(ids, r, a, request_id=position) for r, a in arrays.items()]
    results = disputes.from_evidence(
        messages,
        network="net",
        vnode="a",
        position=position,
        verifier=ids.verifier,
        hosts=hosts,
        now=NOW,
        max_bytes=1 << 20,
    )
    return disputes.Attempt("net", "a", position, inputs, len(arrays), results)


def test_a_disputed_lie_is_proven_by_the_settled_majority(ids: signed_support.Identities) -> None:
    disputed = attempt(ids, "r1", {0: LIE, 1: HONEST})
    settled = attempt(ids, "r2", {0: HONEST, 1: HONEST, 2: HONEST})
    proven = disputes.judge(disputed, settled)
    assert [(p.pnode, p.check) for p in proven] == [("p0", "quorum")]
    assert "replicas 0, 1, 2" in proven[0].message
    assert "'r1'" in proven[0].message


def test_the_liar_lying_again_in_the_retry_is_proven_for_the_disputed_lie_too(
    ids: signed_support.Identities,
) -> None:
    disputed = attempt(ids, "r1", {0: LIE, 1: HONEST})
    settled = attempt(ids, "r2", {0: LIE, 1: HONEST, 2: HONEST})
    assert [p.pnode for p in disputes.judge(disputed, settled)] == ["p0"]


def test_results_agreeing_with_the_majority_are_not_struck(
    ids: signed_support.Identities,
) -> None:
    close = (HONEST * (1 + 1e-7)).astype(np.float32)  # within the comparison's tolerance
    disputed = attempt(ids, "r1", {0: close, 1: HONEST})
    settled = attempt(ids, "r2", {0: HONEST, 1: HONEST, 2: HONEST})
    assert disputes.judge(disputed, settled) == []


@pytest.mark.parametrize(
    "inputs",
    [None, ("in-digest", (("up/0", 5), ("up/1", 2))), ("other-digest", INPUTS[1])],
    ids=["inputs-unknown", "upstream-epoch-moved", "other-input"],
)
def test_nobody_is_struck_when_the_inputs_differ(
    ids: signed_support.Identities, inputs: object
) -> None:
    disputed = attempt(ids, "r1", {0: LIE, 1: HONEST}, inputs=inputs)
    settled = attempt(ids, "r2", {0: HONEST, 1: HONEST, 2: HONEST})
    assert disputes.judge(disputed, settled) == []


def test_nobody_is_struck_without_a_settled_majority(ids: signed_support.Identities) -> None:
    other = (HONEST + 5).astype(np.float32)
    disputed = attempt(ids, "r1", {0: LIE, 1: HONEST})
    settled = attempt(ids, "r2", {0: HONEST, 1: LIE, 2: other})
    assert disputes.judge(disputed, settled) == []


def test_nobody_is_struck_when_the_disputed_slot_moved(ids: signed_support.Identities) -> None:
    disputed = attempt(ids, "r1", {0: LIE, 1: HONEST})
    settled = attempt(ids, "r2", {0: HONEST, 1: HONEST, 2: HONEST})
    moved = tuple(dataclasses.replace(r, epoch=r.epoch + 1) for r in settled.results)
    assert disputes.judge(disputed, dataclasses.replace(settled, results=moved)) == []


def test_a_forged_disputed_result_is_not_judged(ids: signed_support.Identities) -> None:
    forged = signed(ids, 0, LIE, request_id="r1", key_of="p1")  # p0's certificate, p1's key
    disputed = attempt(
        ids, "r1", {0: LIE, 1: HONEST}, evidence=[forged, signed(ids, 1, HONEST, request_id="r1")]
    )
    assert [r.signed for r in disputed.results] == [False, True]
    settled = attempt(ids, "r2", {0: HONEST, 1: HONEST, 2: HONEST})
    assert disputes.judge(disputed, settled) == []


def test_an_unsigned_disputed_result_is_not_judged(ids: signed_support.Identities) -> None:
    bare = signed(ids, 0, LIE, request_id="r1")
    bare.ClearField("signature")
    disputed = attempt(
        ids, "r1", {0: LIE, 1: HONEST}, evidence=[bare, signed(ids, 1, HONEST, request_id="r1")]
    )
    settled = attempt(ids, "r2", {0: HONEST, 1: HONEST, 2: HONEST})
    assert disputes.judge(disputed, settled) == []


def test_an_unsigned_settled_result_does_not_count_toward_the_majority(
    ids: signed_support.Identities,
) -> None:
    bare = signed(ids, 2, HONEST, request_id="r2")
    bare.ClearField("signature")
    disputed = attempt(ids, "r1", {0: LIE, 1: HONEST})
    settled = attempt(
        ids,
        "r2",
        {0: LIE, 1: HONEST, 2: HONEST},
        evidence=[
            signed(ids, 0, LIE, request_id="r2"),
            signed(ids, 1, HONEST, request_id="r2"),
            bare,
        ],
    )
    assert disputes.judge(disputed, settled) == []


def test_evidence_of_another_position_or_vnode_is_left_out(
    ids: signed_support.Identities,
) -> None:
    found = attempt(
        ids,
        "r1",
        {0: LIE, 1: HONEST},
        evidence=[signed(ids, 0, LIE, request_id="r9"), signed(ids, 1, HONEST, request_id="r1")],
    )
    assert [r.replica for r in found.results] == [1]
