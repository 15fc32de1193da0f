"""ValidationService: agents report results that failed a check, and the producer is struck.

Who may accuse whom. A report is a claim by the receiving PNode, so it is accepted only
from a PNode that (1) authenticates with its credential, at its current incarnation, and
(2) hosts a parent or child of the accused VNode in the same network — the only PNodes that
could have received the result. The accused slot must still be at `subject_epoch`, so a
strike lands on the PNode that computed the result, never on the one that took over the
slot since. Anything else is refused and counted (`dcnr_validation_reports_refused`), so a
flood of reports about work the reporter never saw costs it nothing but refusals.

A malicious reporter can still accuse its real neighbours falsely. BOINC avoids this by
validating on its own servers; our orchestrator never handles tensors, so we accept the
risk and bound it: an accusation costs the accused one strike, the job a rollback, and the
reporter nothing — a false accuser shows up as one PNode behind most strikes of its
neighbours (visible in the events), and the operator cordons it. Where this matters more,
checks also run in the driver inbox (sink outputs), which is trusted.

Reports without a subject (a PNode reporting its own result) are recorded as nothing: a
PNode vouching for itself earns no trust.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import grpc
from grpc import aio

from api.dcnr.v1 import validation_pb2, validation_pb2_grpc
from api.resources import allocation, pnode
from controller import credentials, driver_inbox, rpc, trust
from controller import view as view_mod

log = logging.getLogger("dcnr.validation")

FAILED = validation_pb2.CHECK_RESULT_FAILED
REJECTED = validation_pb2.VALIDATION_VERDICT_REJECTED
ACCEPTED = validation_pb2.VALIDATION_VERDICT_ACCEPTED


class ValidationService(validation_pb2_grpc.ValidationServiceServicer):
    def __init__(
        self,
        *,
        view: view_mod.View,
        book: trust.TrustBook,
        inbox: driver_inbox.Inbox,
        replica_id: str,
        on_checked: Callable[[bool], None] | None = None,
        on_refused: Callable[[str], None] | None = None,
    ) -> None:
        self._view = view
        self._book = book
        self._inbox = inbox
        self._replica_id = replica_id
        self._on_checked = on_checked
        self._on_refused = on_refused

    @rpc.handler
    async def ReportResult(
        self,
        request: validation_pb2.ReportResultRequest,
        context: aio.ServicerContext[Any, Any],
    ) -> validation_pb2.ReportResultResponse:
        verdict = self._report(request, rpc.bearer(context))
        return validation_pb2.ReportResultResponse(
            header=rpc.response_header(request.header, self._replica_id), verdict=verdict
        )

    def _report(
        self, request: validation_pb2.ReportResultRequest, presented: str | None
    ) -> validation_pb2.ValidationVerdict.ValueType:
        reporter = self._view.pnodes.get(request.pnode_id)
        if reporter is None or not credentials.matches(presented, reporter.spec.credential_hash):
            self._refused("unauthenticated")
            raise rpc.RpcFailure(
                grpc.StatusCode.UNAUTHENTICATED,
                f"pnode {request.pnode_id!r}: missing or invalid credential; send the "
                "credential Register returned as 'authorization: Bearer <credential>'",
                reason="Unauthenticated",
            )
        if request.incarnation != reporter.status.incarnation:
            self._refused("fenced")
            raise rpc.RpcFailure(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"incarnation: {request.incarnation} is not the current "
                f"{reporter.status.incarnation} of pnode {request.pnode_id!r}; register again",
                reason="Fenced",
            )
        failed = [c for c in request.checks if c.result == FAILED]
        if not request.subject_vnode:
            return ACCEPTED
        producer = self._producer(request, reporter)
        if self._on_checked is not None:
            self._on_checked(not failed)
        if not failed:
            return ACCEPTED
        check = failed[0]
        self._book.record(
            producer,
            trust.Outcome(
                valid=False,
                job=request.job,
                vnode=request.subject_vnode,
                check=check.check,
                message=f"reported by {request.pnode_id}: {check.message}",
            ),
        )
        position: driver_inbox.Position = (
            request.step if request.WhichOneof("position") == "step" else request.request_id
        )
        self._inbox.fail(
            request.job,
            position,
            f"{request.subject_vnode} replica {request.subject_replica} on {producer} failed "
            f"check {check.check}: {check.message}",
        )
        log.warning(
            "result failed a check",
            extra={
                "fields": {
                    "producer": producer,
                    "reporter": request.pnode_id,
                    "vnode": request.subject_vnode,
                    "check": check.check,
                }
            },
        )
        return REJECTED

    def _producer(self, request: validation_pb2.ReportResultRequest, reporter: pnode.PNode) -> str:
        """The PNode that computed the reported result; refuses reporters that could not
        have received it."""
        net = self._view.networks.get(request.network)
        subject = net.vnode(request.subject_vnode) if net is not None else None
        if net is None or subject is None:
            self._refused("unknown-subject")
            raise rpc.invalid(
                "subject_vnode",
                request.subject_vnode,
                f"must be a VNode of network {request.network!r}",
            )
        neighbours = set(subject.inputs) | {
            v.name for v in net.spec.vnodes if subject.name in v.inputs
        }
        hosted = {
            a.spec.vnode for a in self._view.allocations_on(reporter.name)
            if a.spec.network == request.network
        }  # fmt: skip
        if not hosted & neighbours:
            self._refused("not-a-neighbour")
            raise rpc.RpcFailure(
                grpc.StatusCode.PERMISSION_DENIED,
                f"subject_vnode: pnode {reporter.name!r} hosts no parent or child of "
                f"{request.subject_vnode!r} in {request.network!r}, so it cannot have "
                "received its result",
                reason="NotANeighbour",
            )
        slot = allocation.slot_name(request.network, request.subject_vnode, request.subject_replica)
        current = self._view.allocations.get(slot)
        if current is None or current.spec.epoch != request.subject_epoch:
            self._refused("stale-epoch")
            held = "no allocation" if current is None else f"epoch {current.spec.epoch}"
            raise rpc.RpcFailure(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"subject_epoch: {request.subject_epoch} is not the current epoch of slot "
                f"{slot!r} ({held})",
                reason="StaleEpoch",
            )
        return current.spec.pnode

    def _refused(self, reason: str) -> None:
        if self._on_refused is not None:
            self._on_refused(reason)
