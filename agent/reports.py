"""The ValidationService reports an agent sends about results it received from others.

Two sources: a per-message check that failed (`api.checks`, the result is refused), and what
comparing the replicas of a neighbour found (`agent.quorum_inputs`): a loser (FAILED) or a
dispute without a majority (DISPUTED). Either way the reporter is the receiving VNode replica
and the subject is the producer, so the orchestrator can tell whether the reporter is a
neighbour of the subject at all before it strikes anyone.
"""

from __future__ import annotations

from agent import vnode
from api import checks
from api.dcnr.v1 import validation_pb2, vnode_pb2


def check_failed(
    request: vnode_pb2.ForwardRequest | vnode_pb2.BackwardRequest, failed: checks.CheckFailed
) -> validation_pb2.ReportResultRequest:
    """The report of a received result that failed `failed.check`."""
    report = validation_pb2.ReportResultRequest(
        job=request.job,
        network=request.network,
        vnode=request.target_vnode,
        replica=request.target_replica,
        epoch=request.target_epoch,
        phase=_phase(isinstance(request, vnode_pb2.ForwardRequest)),
        checks=[
            validation_pb2.CheckOutcome(
                check=failed.check,
                result=validation_pb2.CHECK_RESULT_FAILED,
                message=failed.message[:1024],
            )
        ],
        subject_vnode=request.sender_vnode,
        subject_replica=request.sender_replica,
        subject_epoch=request.sender_epoch,
    )
    if request.WhichOneof("position") == "step":
        report.step = request.step
    else:
        report.request_id = request.request_id
    return report


def quorum(instance: vnode.Instance, finding: vnode.Finding) -> validation_pb2.ReportResultRequest:
    """The report of a quorum finding of `instance` (check "quorum")."""
    report = validation_pb2.ReportResultRequest(
        job=finding.job,
        network=instance.network,
        vnode=instance.vnode,
        replica=instance.replica,
        epoch=instance.epoch,
        phase=_phase(finding.forward),
        checks=[
            validation_pb2.CheckOutcome(
                check="quorum",
                result=(
                    validation_pb2.CHECK_RESULT_DISPUTED
                    if finding.disputed
                    else validation_pb2.CHECK_RESULT_FAILED
                ),
                message=finding.message[:1024],
            )
        ],
        subject_vnode=finding.subject_vnode,
        subject_replica=finding.subject_replica,
        subject_epoch=finding.subject_epoch,
    )
    kind, value = finding.position
    if kind == "step":
        report.step = int(value)
    else:
        report.request_id = str(value)
    return report


def _phase(forward: bool) -> validation_pb2.ComputePhase.ValueType:
    return (
        validation_pb2.COMPUTE_PHASE_FORWARD if forward else validation_pb2.COMPUTE_PHASE_BACKWARD
    )
