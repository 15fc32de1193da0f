"""The ValidationService reports an agent sends about results it received from others.

Two sources: a per-message check that failed (`api.checks`, the result is refused), and what
comparing the replicas of a neighbour found (`agent.quorum_inputs`): a loser (FAILED) or a
dispute without a majority (DISPUTED). Either way the reporter is the receiving VNode replica
and the subject is the producer, so the orchestrator can tell whether the reporter is a
neighbour of the subject at all before it strikes anyone.

Each report carries its evidence: the received requests with their senders' signatures
(`ReportResultRequest.evidence`), since the orchestrator strikes on nothing else — the one
refused request for a failed check, every replica's compared result for a quorum finding.
"""

from __future__ import annotations

from agent import vnode
from api import checks
from api.dcnr.v1 import common_pb2, validation_pb2, vnode_pb2

#: Most evidence one report carries (the server's cap, ReportResultRequest.evidence).
MAX_EVIDENCE = 16


def check_failed(
    request: vnode_pb2.ForwardRequest | vnode_pb2.BackwardRequest,
    failed: checks.CheckFailed,
    *,
    evidence: common_pb2.SignedMessage | None = None,
) -> validation_pb2.ReportResultRequest:
    """The report of a received result that failed `failed.check`; `evidence`: `request`
    as received, signed by its sender."""
    which = request.WhichOneof("position")
    return _report(
        reporter=(request.network, request.target_vnode, request.target_replica),
        epoch=request.target_epoch,
        job=request.job,
        position=(
            ("request", request.request_id)
            if which != "step"
            else ("step", request.step, request.micro)
            if request.micro_batches > 1
            else ("step", request.step)
        ),
        forward=isinstance(request, vnode_pb2.ForwardRequest),
        outcome=validation_pb2.CheckOutcome(
            check=failed.check, result=validation_pb2.CHECK_RESULT_FAILED, message=failed.message
        ),
        subject=(request.sender_vnode, request.sender_replica, request.sender_epoch),
        evidence=() if evidence is None else (evidence,),
    )


def quorum(instance: vnode.Instance, finding: vnode.Finding) -> validation_pb2.ReportResultRequest:
    """The report of a quorum finding of `instance` (check "quorum")."""
    result = (
        validation_pb2.CHECK_RESULT_DISPUTED
        if finding.disputed
        else validation_pb2.CHECK_RESULT_FAILED
    )
    return _report(
        reporter=(instance.network, instance.vnode, instance.replica),
        epoch=instance.epoch,
        job=finding.job,
        position=finding.position,
        forward=finding.forward,
        outcome=validation_pb2.CheckOutcome(check="quorum", result=result, message=finding.message),
        subject=(finding.subject_vnode, finding.subject_replica, finding.subject_epoch),
        evidence=finding.evidence,
    )


def _report(
    *,
    reporter: tuple[str, str, int],
    epoch: int,
    job: str,
    position: vnode.Position,
    forward: bool,
    outcome: validation_pb2.CheckOutcome,
    subject: tuple[str, int, int],
    evidence: tuple[common_pb2.SignedMessage, ...] = (),
) -> validation_pb2.ReportResultRequest:
    """`reporter`: (network, vnode, replica) that received the result; `subject`: (vnode,
    replica, epoch) that produced it."""
    network, name, replica = reporter
    outcome.message = outcome.message[:1024]
    report = validation_pb2.ReportResultRequest(
        job=job,
        network=network,
        vnode=name,
        replica=replica,
        epoch=epoch,
        phase=(
            validation_pb2.COMPUTE_PHASE_FORWARD
            if forward
            else validation_pb2.COMPUTE_PHASE_BACKWARD
        ),
        checks=[outcome],
        subject_vnode=subject[0],
        subject_replica=subject[1],
        subject_epoch=subject[2],
        evidence=evidence[:MAX_EVIDENCE],
    )
    if position[0] == "step":
        report.step = int(position[1])
        report.micro = vnode.part(position)
    else:
        report.request_id = str(position[1])
    return report
