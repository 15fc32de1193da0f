"""ValidationService: agents report results that failed a check, and the producer is struck.

Who may accuse whom. A report is a claim by the receiving PNode, so it is accepted only
from a PNode that (1) authenticates with its credential, at its current incarnation, and
(2) hosts a parent or child of the accused VNode in the same network — the only PNodes that
could have received the result. The accused slot must still be at `subject_epoch`, so a
strike lands on the PNode that computed the result, never on the one that took over the
slot since. Anything else is refused and counted (`dcnr_validation_reports_refused`), so a
flood of reports about work the reporter never saw costs it nothing but refusals.

Accusations need evidence (issue 11; docs/security.md "Evidence"). A neighbour's word is not
enough: a report that accuses a PNode carries the accused's own signed requests
(`ReportResultRequest.evidence`), and `controller.trust.evidence` decides what they prove —
each signature and certificate verifies against the identity CA, the signer holds the
accused slot at the body's epoch, the body names the report's job, position and subject and
targets the reporter's slot; then the check is run again here on the signed tensor (with the
kind and params of the stored network spec), or the signed replica results are compared
here. The accused is struck only for what fails here. An accusation that proves nothing
(no, forged or mismatched evidence, a check that passes again, no majority against the
accused) is refused with PERMISSION_DENIED and costs the ACCUSER one strike (check
"false-accusation", so it counts toward Suspect and Bugged like any lie: a false accusation
is a lie about a neighbour, and a separate counter would let a liar spend its whole budget
on both), an AccusationRefused event on both PNodes (`dcnctl describe pnode` lists them) and
a count in `dcnr_validation_reports_refused` by reason. A slot that moved, or a certificate
that expired, between receipt and report is refused as `stale-evidence` and costs nobody:
an honest reporter can meet that race. Evidence is bounded (16 messages, each within the
data plane's message bound) before any signature is verified. A served orchestrator always
has its identity CA's verifier; built without one (`verifier` None, unit tests of the other
rules) reports are believed on the neighbour's word, and a warning at start says so.
Checks also run in the driver inbox (sink outputs), which is trusted.

Reports without a subject (a PNode reporting its own result) are recorded as nothing: a
PNode vouching for itself earns no trust.

Quorum reports (check "quorum") come from a replica that compared the results of all
replicas of a neighbour. FAILED: the subject replica lost to a majority: it is struck like
any failed check, but the job goes on (the majority's result was used), so the local run is
only told not to credit it (`Inbox.strike`) instead of rolling back. DISPUTED: no majority;
nobody is struck, a tiebreaker replica of the subject VNode is requested
(`controller.trust.tiebreak`), and a local run of the job rolls back to wait for it. Its
`subject_epoch` may be that of any replica of the VNode (the reporter names replica 0 of a
set that disagrees), so it is admitted when any current replica is at that epoch.

Every replica of a child receives the same result from a parent replica, so one lie is
reported once per receiving replica. Reports are counted once per (job, position, phase,
subject slot and epoch, check): a lie costs one strike however many replicas saw it. The
memory of reports is bounded (`MAX_REMEMBERED`) and per orchestrator replica; a duplicate
that lands on another replica, or after the bound, strikes again — rare, and bounded by the
number of receiving replicas.
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Callable
from typing import Any, Literal, get_args

from grpc import aio

from api import identity
from api.dcnr.v1 import validation_pb2, validation_pb2_grpc
from api.resources import allocation, pnode
from api.resources import event as event_model
from controller import errors as faults
from controller.jobs import driver_inbox
from controller.runtime import clock as clock_mod
from controller.runtime import recorder
from controller.services import rpc
from controller.state import credentials
from controller.state import pnode_registry as registry
from controller.state import view as view_mod
from controller.trust import book as trust
from controller.trust import evidence as evidence_mod
from controller.trust import tiebreak
from store import base

log = logging.getLogger("dcnr.validation")

#: Why a report is refused: the label values of `dcnr_validation_reports_refused_total`,
#: exported as 0 from the start so an alert on them sees a series before the first refusal.
#: Then the evidence's refusals (`controller.trust.evidence.REFUSALS`).
Refusal = Literal["unauthenticated", "fenced", "unknown-subject", "not-a-neighbour", "stale-epoch"]
REFUSALS: tuple[str, ...] = (*get_args(Refusal), *evidence_mod.REFUSALS)
#: What a false accusation is recorded as, in the accuser's trust (a strike).
FALSE_ACCUSATION = "false-accusation"

QUORUM = "quorum"
FAILED = validation_pb2.CHECK_RESULT_FAILED
DISPUTED = validation_pb2.CHECK_RESULT_DISPUTED
REJECTED = validation_pb2.VALIDATION_VERDICT_REJECTED
ACCEPTED = validation_pb2.VALIDATION_VERDICT_ACCEPTED
DISPUTED_VERDICT = validation_pb2.VALIDATION_VERDICT_DISPUTED
#: Reports remembered to count each reported result once (see the module docstring).
MAX_REMEMBERED = 4096
#: Check outcomes one report may carry (docs/security.md, "Limits"); a kind runs a handful.
MAX_CHECKS = 64

#: What makes two reports about the same thing: network, job, request id, step, phase,
#: subject VNode, replica and epoch (-1 for a dispute: about all replicas), check.
ReportKey = tuple[str, str, str, int, int, str, int, int, str]


class ValidationService(validation_pb2_grpc.ValidationServiceServicer):
    def __init__(
        self,
        *,
        store: base.Store,
        view: view_mod.View,
        book: trust.TrustBook,
        inbox: driver_inbox.Inbox,
        replica_id: str,
        on_checked: Callable[[bool], None] | None = None,
        on_refused: Callable[[str], None] | None = None,
        on_disagreed: Callable[[], None] | None = None,
        on_tiebreak: Callable[[], None] | None = None,
        verifier: identity.Verifier | None = None,
        clock: clock_mod.Clock | None = None,
        events: recorder.Recorder | None = None,
        max_evidence_bytes: int = driver_inbox.DEFAULT_MAX_MESSAGE_BYTES,
    ) -> None:
        """`on_disagreed`: a reported disagreement (a loser or a dispute), once per result;
        `on_tiebreak`: a tiebreaker this service requested (not one already requested).

        `verifier`: checks the evidence of accusations against the identity CA (module
        docstring); `serve` always passes its identity CA's. None (tests of other rules
        only): an accusation is taken on the neighbour's word, and a warning says so.
        `max_evidence_bytes`: the largest body of one piece of evidence (the data plane's
        tensor message bound)."""
        self._store = store
        self._view = view
        self._book = book
        self._inbox = inbox
        self._replica_id = replica_id
        self._on_checked = on_checked
        self._on_refused = on_refused
        self._on_disagreed = on_disagreed
        self._on_tiebreak = on_tiebreak
        self._seen: collections.OrderedDict[ReportKey, None] = collections.OrderedDict()
        self._verifier = verifier
        self._clock = clock or clock_mod.SystemClock()
        self._events = events
        self._max_evidence_bytes = max_evidence_bytes
        if verifier is None:
            log.warning(
                "no identity CA: validation reports are believed without evidence, so a "
                "lying neighbour can get an honest PNode struck"
            )

    @rpc.handler
    async def ReportResult(
        self,
        request: validation_pb2.ReportResultRequest,
        context: aio.ServicerContext[Any, Any],
    ) -> validation_pb2.ReportResultResponse:
        verdict = await self._report(request, rpc.bearer(context))
        return validation_pb2.ReportResultResponse(
            header=rpc.response_header(request.header, self._replica_id), verdict=verdict
        )

    async def _report(
        self, request: validation_pb2.ReportResultRequest, presented: str | None
    ) -> validation_pb2.ValidationVerdict.ValueType:
        if len(request.checks) > MAX_CHECKS:
            raise faults.ResourceExhausted(
                f"checks: {len(request.checks)} entries; at most {MAX_CHECKS} per report",
                reason="TooMany",
            )
        self._bound(request)
        reporter = self._view.pnodes.get(request.pnode_id)
        if reporter is None or not credentials.matches(presented, reporter.spec.credential_hash):
            self._refused("unauthenticated")
            # One answer for an unknown reporter and a wrong credential: it names nothing.
            raise registry.unauthenticated()
        if request.incarnation != reporter.status.incarnation:
            self._refused("fenced")
            raise faults.FailedPrecondition(
                f"incarnation: {request.incarnation} is not the current "
                f"{reporter.status.incarnation} of pnode {request.pnode_id!r}; register again",
                reason="Fenced",
            )
        if not request.subject_vnode:
            return ACCEPTED
        disputed = next(
            (c for c in request.checks if c.check == QUORUM and c.result == DISPUTED), None
        )
        if disputed is not None:
            accused = self._admit(request, reporter, any_replica=True)
            self._prove(request, accused, "dispute")
            return await self._disputed(request, disputed)
        producer = self._admit(request, reporter, any_replica=False)
        failed = [c for c in request.checks if c.result == FAILED]
        if not failed:
            if self._on_checked is not None:
                self._on_checked(True)
            return ACCEPTED
        check = failed[0]
        proven = self._prove(request, producer, "quorum" if check.check == QUORUM else "check")
        if proven is not None:  # what was found here, not what the reporter said
            check = validation_pb2.CheckOutcome(
                check=proven.check, result=FAILED, message=f"{proven.message} (checked again)"
            )
        if not self._first(request, check.check):
            return REJECTED  # the same result, reported by another receiving replica
        if self._on_checked is not None:
            self._on_checked(False)
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
        position = _position(request)
        if check.check == QUORUM:
            # The majority's result was used: the job goes on, the loser gets no credit.
            self._inbox.strike(request.job, position, producer)
            if self._on_disagreed is not None:
                self._on_disagreed()
        else:
            self._inbox.fail(
                request.job,
                position,
                f"{request.subject_vnode} replica {request.subject_replica} on {producer} "
                f"failed check {check.check}: {check.message}",
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

    async def _disputed(
        self, request: validation_pb2.ReportResultRequest, check: validation_pb2.CheckOutcome
    ) -> validation_pb2.ValidationVerdict.ValueType:
        """No majority among the subject VNode's replicas: nobody is struck; one more
        replica is requested, and a local run of the job rolls back to wait for it."""
        if not self._first(request, QUORUM, replica=False):
            return DISPUTED_VERDICT
        if self._on_disagreed is not None:
            self._on_disagreed()
        added = await tiebreak.request(
            self._store,
            request.network,
            request.subject_vnode,
            on_written=self._view.apply_written,
        )
        if added and self._on_tiebreak is not None:
            self._on_tiebreak()
        self._inbox.fail(
            request.job,
            _position(request),
            f"the replicas of {request.subject_vnode} disagree with no majority (reported by "
            f"{request.pnode_id}: {check.message}); a tiebreaker replica is requested",
            disputed=request.subject_vnode,
        )
        log.warning(
            "replicas disagree with no majority",
            extra={
                "fields": {
                    "reporter": request.pnode_id,
                    "network": request.network,
                    "vnode": request.subject_vnode,
                    "tiebreaker_added": added,
                }
            },
        )
        return DISPUTED_VERDICT

    def _bound(self, request: validation_pb2.ReportResultRequest) -> None:
        """The evidence caps, before any work (proto: ReportResultRequest.evidence)."""
        if len(request.evidence) > evidence_mod.MAX_EVIDENCE:
            raise faults.ResourceExhausted(
                f"evidence: {len(request.evidence)} messages is over the limit of "
                f"{evidence_mod.MAX_EVIDENCE}",
                reason="TooMuchEvidence",
            )
        for i, found in enumerate(request.evidence):
            if len(found.body) > self._max_evidence_bytes:
                raise faults.FieldInvalid(
                    f"evidence[{i}].body",
                    f"{len(found.body)} bytes",
                    f"at most {self._max_evidence_bytes} bytes, the data plane's message bound",
                )

    def _prove(
        self,
        request: validation_pb2.ReportResultRequest,
        accused: str,
        mode: evidence_mod.Mode,
    ) -> evidence_mod.Proven | None:
        """What the report's evidence proves (`controller.trust.evidence`); None without a
        verifier (nothing to prove with) or for a proven dispute. A refusal costs the
        reporter a strike unless it is blameless, and is an event on both PNodes."""
        if self._verifier is None:
            return None
        net = self._view.networks.get(request.network)
        subject = net.vnode(request.subject_vnode) if net is not None else None
        assert net is not None
        assert subject is not None
        which = request.WhichOneof("position")
        accusation = evidence_mod.Accusation(
            network=request.network,
            job=request.job,
            position=request.step if which == "step" else request.request_id,
            forward=request.phase != validation_pb2.COMPUTE_PHASE_BACKWARD,
            reporter=request.pnode_id,
            reporter_slot=(request.vnode, request.replica, request.epoch),
            subject=(request.subject_vnode, request.subject_replica, request.subject_epoch),
            micro=request.micro,
        )

        def hosts(vnode: str, replica: int) -> tuple[str, int] | None:
            held = self._view.allocations.get(allocation.slot_name(request.network, vnode, replica))
            return None if held is None else (held.spec.pnode, held.spec.epoch)

        try:
            return evidence_mod.prove(
                accusation,
                request.evidence,
                mode=mode,
                verifier=self._verifier,
                hosts=hosts,
                now=self._clock.now(),
                max_bytes=self._max_evidence_bytes,
                kind=subject.kind,
                params=subject.params,
                replicas=net.replicas_of(subject),
            )
        except evidence_mod.Refused as refused:
            raise self._refuse_accusation(request, accused, mode, refused) from None

    def _refuse_accusation(
        self,
        request: validation_pb2.ReportResultRequest,
        accused: str,
        mode: evidence_mod.Mode,
        refused: evidence_mod.Refused,
    ) -> faults.ControllerError:
        """Count, charge and record a refused accusation; the error to answer with."""
        self._refused(refused.reason)
        reporter = request.pnode_id
        check = (
            QUORUM
            if mode != "check"
            else next((c.check[:64] for c in request.checks if c.result == FAILED), "check")
        )
        detail = (
            f"{refused.reason} ({request.subject_vnode} replica {request.subject_replica}, "
            f"check {check})"
        )
        log.warning(
            "accusation refused",
            extra={
                "fields": {
                    "reporter": reporter,
                    "accused": accused,
                    "reason": refused.reason,
                    "why": refused.message,
                }
            },
        )
        if refused.blameless:
            return faults.FailedPrecondition(
                f"{refused.message}; report again with evidence from the current epochs",
                reason="StaleEvidence",
            )
        self._book.record(
            reporter,
            trust.Outcome(
                valid=False,
                job=request.job,
                vnode=request.subject_vnode,
                check=FALSE_ACCUSATION,
                message=f"accused {accused} without proof: {refused.message}",
            ),
        )
        if self._events is not None:
            message = event_model.accusation_refused(reporter, accused, detail)
            for name in dict.fromkeys((reporter, accused)):
                self._events.warning("PNode", name, "AccusationRefused", message)
        return faults.PermissionDenied(
            f"{refused.message}: the accusation is refused and costs the reporter a strike",
            reason="AccusationRefused",
        )

    def _first(
        self, request: validation_pb2.ReportResultRequest, check: str, *, replica: bool = True
    ) -> bool:
        """Whether this is the first report of this result and check (and remember it).
        A dispute is about the VNode's replicas together, not one of them."""
        position = request.step if request.WhichOneof("position") == "step" else -1
        key: ReportKey = (
            request.network,
            request.job,
            request.request_id,
            position,
            int(request.phase),
            request.subject_vnode,
            request.subject_replica if replica else -1,
            request.subject_epoch if replica else -1,
            check,
        )
        if key in self._seen:
            return False
        self._seen[key] = None
        if len(self._seen) > MAX_REMEMBERED:
            self._seen.popitem(last=False)
        return True

    def _admit(
        self,
        request: validation_pb2.ReportResultRequest,
        reporter: pnode.PNode,
        *,
        any_replica: bool,
    ) -> str:
        """The PNode that computed the reported result; refuses reporters that could not
        have received it. `any_replica`: the epoch may be that of any replica of the
        subject VNode (a dispute is about all of them)."""
        net = self._view.networks.get(request.network)
        subject = net.vnode(request.subject_vnode) if net is not None else None
        if net is None or subject is None:
            self._refused("unknown-subject")
            raise faults.FieldInvalid(
                "subject_vnode",
                request.subject_vnode,
                f"must be a VNode of network {request.network!r}",
            )
        neighbours = set(net.neighbours()[subject.name])
        hosted = {
            a.spec.vnode for a in self._view.allocations_on(reporter.name)
            if a.spec.network == request.network
        }  # fmt: skip
        if not hosted & neighbours:
            self._refused("not-a-neighbour")
            raise faults.PermissionDenied(
                f"subject_vnode: pnode {reporter.name!r} hosts no parent or child of "
                f"{request.subject_vnode!r} in {request.network!r}, so it cannot have "
                "received its result",
                reason="NotANeighbour",
            )
        slot = allocation.slot_name(request.network, request.subject_vnode, request.subject_replica)
        current = self._view.allocations.get(slot)
        if current is not None and current.spec.epoch == request.subject_epoch:
            return current.spec.pnode
        if any_replica:
            for replica in range(net.replicas_of(subject)):
                other = allocation.slot_name(request.network, subject.name, replica)
                found = self._view.allocations.get(other)
                if found is not None and found.spec.epoch == request.subject_epoch:
                    return found.spec.pnode
        self._refused("stale-epoch")
        held = "no allocation" if current is None else f"epoch {current.spec.epoch}"
        which = f"any replica of {subject.name!r}" if any_replica else f"slot {slot!r}"
        raise faults.FailedPrecondition(
            f"subject_epoch: {request.subject_epoch} is not the current epoch of {which} "
            f"({slot}: {held})",
            reason="StaleEpoch",
        )

    def _refused(self, reason: str) -> None:
        if self._on_refused is not None:
            self._on_refused(reason)


def _position(request: validation_pb2.ReportResultRequest) -> driver_inbox.Position:
    return request.step if request.WhichOneof("position") == "step" else request.request_id
