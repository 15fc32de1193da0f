"""controller.trust.evidence: what a signed result proves, and who pays when it proves nothing.

Real signatures from a test identity CA; a relu VNode `a` (3 replicas) feeds `b`, whose
replica 0 on p2 is the reporter. A relu output below zero is a provable lie."""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Callable, Sequence

import numpy as np
import pytest

from api import identity
from api.dcnr.v1 import common_pb2, vnode_pb2
from controller.trust import evidence
from tests.support import evidence as signed_support

NOW = signed_support.NOW
#: (vnode, replica) -> (pnode, epoch)
PLACED = {("a", 0): ("p0", 1), ("a", 1): ("p1", 2), ("a", 2): ("p3", 1), ("b", 0): ("p2", 1)}
LIE = np.array([[1.0, -2.0]], dtype=np.float32)
HONEST = np.array([[1.0, 2.0]], dtype=np.float32)
REPORTER = ("b", 0, 1)
ACCUSATION = evidence.Accusation(
    network="net",
    job="train",
    position=5,
    forward=True,
    reporter="p2",
    reporter_slot=REPORTER,
    subject=("a", 0, 1),
)


@pytest.fixture(scope="module")
def ids() -> signed_support.Identities:
    return signed_support.Identities(["p0", "p1", "p2", "p3"])


def hosts(vnode: str, replica: int) -> tuple[str, int] | None:
    return PLACED.get((vnode, replica))


def result(
    ids: signed_support.Identities,
    array: np.ndarray,
    *,
    replica: int = 0,
    signer: str | None = None,
    **fields: object,
) -> common_pb2.SignedMessage:
    """a replica `replica`'s signed Forward of `array` to the reporter; `fields` override."""
    where, epoch = PLACED[("a", replica)]
    request = signed_support.forward(array, sender=("a", replica, epoch), target=REPORTER)
    for name, value in fields.items():
        if isinstance(value, common_pb2.Tensor):
            getattr(request, name).CopyFrom(value)
        else:
            setattr(request, name, value)
    return ids.sign(signer or where, request)


def prove(
    ids: signed_support.Identities,
    found: Sequence[common_pb2.SignedMessage],
    *,
    mode: evidence.Mode = "check",
    accusation: evidence.Accusation = ACCUSATION,
    verifier: identity.Verifier | None = None,
    now: dt.datetime = NOW,
) -> evidence.Proven | None:
    return evidence.prove(
        accusation,
        found,
        mode=mode,
        verifier=verifier or ids.verifier,
        hosts=hosts,
        now=now,
        max_bytes=1 << 20,
        kind="relu",
        params={},
        replicas=3,
    )


def refusal(call: object) -> tuple[evidence.Refusal, bool]:
    assert isinstance(call, Exception)
    assert isinstance(call, evidence.Refused)
    return call.reason, call.blameless


def refused(ids: signed_support.Identities, *args: object, **kwargs: object) -> evidence.Refused:
    with pytest.raises(evidence.Refused) as caught:
        prove(ids, *args, **kwargs)  # type: ignore[arg-type]
    return caught.value


def test_a_genuine_failing_signed_result_proves_the_lie(ids: signed_support.Identities) -> None:
    proven = prove(ids, [result(ids, LIE)])
    assert proven == evidence.Proven("p0", "invariant:relu_nonnegative", "minimum -2 is below 0")


def test_the_method_names_match_the_generated_service() -> None:
    assert evidence.FORWARD == signed_support.FORWARD
    assert evidence.BACKWARD == signed_support.BACKWARD


# Each way an accusation can fail to prove anything, and whether the accuser pays.
def _forged(ids: signed_support.Identities) -> list[common_pb2.SignedMessage]:
    return [ids.sign("p0", _lie(), key_of="p2")]  # p2's key under p0's certificate


def _other_ca(ids: signed_support.Identities) -> list[common_pb2.SignedMessage]:
    stranger = signed_support.Identities(["p0"])
    return [stranger.sign("p0", _lie())]


def _lie() -> vnode_pb2.ForwardRequest:
    return signed_support.forward(LIE, sender=("a", 0, 1), target=REPORTER)


Make = Callable[[signed_support.Identities], list[common_pb2.SignedMessage]]
CASES: dict[str, tuple[Make, evidence.Refusal, bool]] = {
    "no evidence": (lambda ids: [], "no-evidence", False),
    "forged signature": (_forged, "bad-evidence", False),
    "certificate of another CA": (_other_ca, "bad-evidence", False),
    "unsigned": (
        lambda ids: [dataclasses.replace(_Unsigned(), body=_lie().SerializeToString()).message()],
        "bad-evidence",
        False,
    ),
    "signer is not the slot's host": (
        lambda ids: [result(ids, LIE, signer="p1")],
        "wrong-signer",
        False,
    ),
    "another job": (lambda ids: [result(ids, LIE, job="other")], "evidence-mismatch", False),
    "another step": (lambda ids: [result(ids, LIE, step=6)], "evidence-mismatch", False),
    "another target slot": (
        lambda ids: [result(ids, LIE, target_replica=1)],
        "evidence-mismatch",
        False,
    ),
    "another sender vnode": (
        lambda ids: [result(ids, LIE, sender_vnode="b")],
        "evidence-mismatch",
        False,
    ),
    "another replica than accused": (
        lambda ids: [result(ids, LIE, replica=1)],
        "evidence-mismatch",
        False,
    ),
    "the check passes again": (lambda ids: [result(ids, HONEST)], "unconvincing", False),
    "a bad checksum": (
        lambda ids: [result(ids, LIE, tensor=_bad_checksum())],
        "unconvincing",
        False,
    ),
    "the sender slot moved since": (
        lambda ids: [result(ids, LIE, sender_epoch=0)],
        "stale-evidence",
        True,
    ),
}


@dataclasses.dataclass
class _Unsigned:
    body: bytes = b""

    def message(self) -> common_pb2.SignedMessage:
        return common_pb2.SignedMessage(method=signed_support.FORWARD, body=self.body)


def _bad_checksum() -> common_pb2.Tensor:
    tensor = signed_support.forward(LIE, sender=("a", 0, 1), target=REPORTER).tensor
    tensor.crc32 ^= 1
    return tensor


@pytest.mark.parametrize("case", sorted(CASES))
def test_unproven_accusations_are_refused(ids: signed_support.Identities, case: str) -> None:
    make, reason, blameless = CASES[case]
    caught = refused(ids, make(ids))
    assert (caught.reason, caught.blameless) == (reason, blameless), caught.message


def test_every_refusal_has_a_case() -> None:
    covered = {reason for _, reason, _ in CASES.values()}
    assert covered | {"stale-evidence"} >= set(evidence.REFUSALS)


def test_an_expired_certificate_is_blameless(ids: signed_support.Identities) -> None:
    caught = refused(ids, [result(ids, LIE)], now=NOW + dt.timedelta(hours=2))
    assert (caught.reason, caught.blameless) == ("stale-evidence", True)


def test_a_backward_body_does_not_prove_a_forward_accusation(
    ids: signed_support.Identities,
) -> None:
    request = vnode_pb2.BackwardRequest.FromString(_lie().SerializeToString())
    caught = refused(ids, [ids.sign("p0", request)])
    assert caught.reason == "evidence-mismatch"
    assert "method" in caught.message


def test_a_reporter_must_hold_the_slot_it_reports_for(ids: signed_support.Identities) -> None:
    someone_else = dataclasses.replace(ACCUSATION, reporter="p3")
    assert refused(ids, [result(ids, LIE)], accusation=someone_else).reason == ("evidence-mismatch")
    moved = dataclasses.replace(ACCUSATION, reporter_slot=("b", 0, 7))
    caught = refused(ids, [result(ids, LIE, target_epoch=7)], accusation=moved)
    assert (caught.reason, caught.blameless) == ("stale-evidence", True)


def test_a_gradient_check_is_run_again(ids: signed_support.Identities) -> None:
    backward = dataclasses.replace(ACCUSATION, forward=False)
    for array, proves in ((np.array([np.nan], dtype=np.float32), True), (LIE, False)):
        request = vnode_pb2.BackwardRequest.FromString(_lie().SerializeToString())
        request.tensor.CopyFrom(
            signed_support.forward(array, sender=("a", 0, 1), target=REPORTER).tensor
        )
        found = [ids.sign("p0", request)]
        if proves:
            proven = prove(ids, found, accusation=backward)
            assert proven is not None
            assert proven.check == "finite"
        else:
            assert refused(ids, found, accusation=backward).reason == "unconvincing"


# -- quorum: the signed results are compared here -------------------------------------------


def test_a_quorum_loser_is_proven_by_the_majority_of_signed_results(
    ids: signed_support.Identities,
) -> None:
    found = [
        result(ids, HONEST, replica=0),
        result(ids, LIE, replica=1),
        result(ids, HONEST, replica=2),
    ]
    loser = dataclasses.replace(ACCUSATION, subject=("a", 1, 2))
    proven = prove(ids, found, mode="quorum", accusation=loser)
    assert proven is not None
    assert (proven.pnode, proven.check) == ("p1", "quorum")
    assert "replicas 0, 2" in proven.message


def test_a_quorum_report_against_the_majority_costs_the_reporter(
    ids: signed_support.Identities,
) -> None:
    found = [
        result(ids, HONEST, replica=0),
        result(ids, LIE, replica=1),
        result(ids, HONEST, replica=2),
    ]
    assert refused(ids, found, mode="quorum").reason == "unconvincing"  # accuses a.0
    # Leaving out a replica's result cannot make a majority of the three that run.
    assert refused(ids, found[:2], mode="quorum").reason == "unconvincing"
    # And the accused's own result must be among them.
    loser = dataclasses.replace(ACCUSATION, subject=("a", 1, 2))
    assert refused(ids, [found[0], found[2]], mode="quorum", accusation=loser).reason == (
        "evidence-mismatch"
    )


def test_a_forged_replica_result_does_not_count(ids: signed_support.Identities) -> None:
    """The reporter cannot vote in place of a replica: a result signed by anyone but its
    slot's host refuses the whole report."""
    found = [result(ids, LIE, replica=0), result(ids, HONEST, replica=1, signer="p2"),
             result(ids, HONEST, replica=2)]  # fmt: skip
    assert refused(ids, found, mode="quorum").reason == "wrong-signer"


def test_a_dispute_needs_two_signed_results_that_differ(ids: signed_support.Identities) -> None:
    differ = [result(ids, HONEST, replica=0), result(ids, LIE, replica=1)]
    assert prove(ids, differ, mode="dispute") is None
    agree = [result(ids, HONEST, replica=0), result(ids, HONEST, replica=1)]
    assert refused(ids, agree, mode="dispute").reason == "unconvincing"
    assert refused(ids, differ[:1], mode="dispute").reason == "unconvincing"


def test_micro_batch_parts_are_compared_only_like_with_like(
    ids: signed_support.Identities,
) -> None:
    """A pipelined step's parts are positions of their own: a loser is proven by results of
    its own part, and one result of another part among them proves nothing."""
    loser = dataclasses.replace(ACCUSATION, subject=("a", 1, 2), micro=2)
    found = [
        result(ids, HONEST, replica=0, micro=2, micro_batches=4),
        result(ids, LIE, replica=1, micro=2, micro_batches=4),
        result(ids, HONEST, replica=2, micro=2, micro_batches=4),
    ]
    proven = prove(ids, found, mode="quorum", accusation=loser)
    assert proven is not None
    assert proven.pnode == "p1"
    mixed = [*found[:2], result(ids, HONEST, replica=2, micro=1, micro_batches=4)]
    caught = refused(ids, mixed, mode="quorum", accusation=loser)
    assert caught.reason == "evidence-mismatch"
    assert "micro" in str(caught)
