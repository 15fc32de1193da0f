"""The evidence an agent's reports carry (`agent.reports`, `agent.vnode`): a failed check
carries the one refused request, a quorum finding the signed results of every replica it
compared, as received (`vnode.Message.evidence`). Real signatures from a test CA."""

from __future__ import annotations

import numpy as np

from agent import reports
from api import checks
from api.dcnr.v1 import common_pb2, validation_pb2, vnode_pb2
from tests.agent.test_vnode_quorum import REQUEST, X, make, msg
from tests.support import evidence as signed_support

IDS = signed_support.Identities(["p0", "p1", "p2"])
TARGET = ("h", 0, 4)


def signed(replica: int, array: np.ndarray) -> common_pb2.SignedMessage:
    """a replica `replica`'s Forward to h.0, signed by p<replica>."""
    request = signed_support.forward(
        array, sender=("a", replica, 10 + replica), target=TARGET, job="j"
    )
    return IDS.sign(f"p{replica}", request)


def test_a_failed_check_reports_the_refused_request_as_received() -> None:
    proof = signed(0, X)
    request = signed_support.forward(X, sender=("a", 0, 10), target=TARGET, job="j")
    failed = checks.CheckFailed("finite", "1 of 6 values not finite")
    report = reports.check_failed(request, failed, evidence=proof)
    assert list(report.evidence) == [proof]
    assert report.checks[0].result == validation_pb2.CHECK_RESULT_FAILED
    assert list(reports.check_failed(request, failed).evidence) == []


def test_a_dispute_carries_both_signed_results_and_a_loser_all_three() -> None:
    h = make({"a": 2})
    results = [X, X * np.float32(1.01)]
    proofs = [signed(r, a) for r, a in enumerate(results)]
    h.receive(msg("a", 0, results[0], evidence=proofs[0]))
    (disputed,) = h.receive(msg("a", 1, results[1], evidence=proofs[1])).findings
    report = reports.quorum(h, disputed)
    assert report.checks[0].result == validation_pb2.CHECK_RESULT_DISPUTED
    assert list(report.evidence) == proofs
    tiebreaker = signed(2, results[0].copy())
    (lost,) = h.receive(msg("a", 2, results[0].copy(), evidence=tiebreaker)).findings
    report = reports.quorum(h, lost)
    assert (report.subject_replica, report.checks[0].result) == (
        1,
        validation_pb2.CHECK_RESULT_FAILED,
    )
    assert list(report.evidence) == [*proofs, tiebreaker]
    assert report.request_id == REQUEST[1]


def test_a_late_loser_is_reported_with_the_majority_it_lost_to() -> None:
    h = make({"a": 3})
    h.receive(msg("a", 0, X, evidence=signed(0, X)))
    h.receive(msg("a", 2, X, evidence=signed(2, X)))
    (finding,) = h.receive(msg("a", 1, X + 1, evidence=signed(1, X + 1))).findings
    replicas = [
        vnode_pb2.ForwardRequest.FromString(e.body).sender_replica
        for e in reports.quorum(h, finding).evidence
    ]
    assert replicas == [0, 1, 2]


def test_a_result_received_unsigned_carries_no_stale_evidence() -> None:
    """A replica whose last delivery carried no signature contributes none: an earlier
    delivery's signature is not evidence for a later result."""
    h = make({"a": 2})
    h.receive(msg("a", 0, X, evidence=signed(0, X)))
    (disputed,) = h.receive(msg("a", 1, X + 1)).findings
    assert [e.body for e in disputed.evidence] == [signed(0, X).body]
