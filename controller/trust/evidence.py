"""Evidence for an accusation: the accused PNode's own signed results, checked again here.

A report that accuses a PNode (ValidationService) names a subject slot and a check; this
module decides whether the evidence it carries proves the accusation. Pure: the caller hands
in a `identity.Verifier`, the time, and `Hosts` (which PNode holds a slot now, and at which
epoch), so the rules are testable without a store or a socket.

What each SignedMessage must be, in order (the first failure decides):

    rule                                                       refused as         who pays
    ---------------------------------------------------------  -----------------  ---------
    signature and certificate verify against the identity CA  bad-evidence       reporter
      (an expired certificate: the slot may have rotated)      stale-evidence     nobody
    the method is the report's phase (Forward / Backward),     evidence-mismatch  reporter
      the body parses as its request, names the report's job,
      position (and micro-batch part), network, and the
      subject VNode as sender
    its target is the reporter's slot, at the report's epoch   evidence-mismatch  reporter
    the sender slot is held now at the body's sender epoch     stale-evidence     nobody
    the signer is the PNode holding the sender slot            wrong-signer       reporter

Then, what the messages prove (`unconvincing`, the reporter pays, when they do not):

- a failed check: exactly one message, about the subject slot at `subject_epoch`; the
  check (`api.checks`, with the kind and params of the network spec) fails when run here on
  its tensor. The failure found here is what strikes, whatever check the reporter named.
- quorum FAILED: every replica's result, compared here (`api.quorum.decide`); the subject
  replica must be outside a majority of the VNode's replicas.
- quorum DISPUTED: at least two results that do not agree.

Why honest reporters never pay: an agent verifies each request's signer before it takes it
(the signer holds the sender slot), and the checks and the comparison are deterministic
functions of the signed bytes, so what failed there fails here. The one race, a slot that
moved (or a certificate that expired) between receipt and report, is `stale-evidence`.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal, get_args

import numpy as np
from google.protobuf import message as pb_message

from api import checks, identity, quorum, tensors
from api.dcnr.v1 import common_pb2, vnode_pb2

#: At most this many messages per report: more replicas than this are never compared.
MAX_EVIDENCE = 16

Refusal = Literal[
    "no-evidence",
    "bad-evidence",
    "evidence-mismatch",
    "wrong-signer",
    "unconvincing",
    "stale-evidence",
]
REFUSALS: tuple[Refusal, ...] = get_args(Refusal)
#: Refusals that cost nobody anything: an honest reporter can meet them in a race.
BLAMELESS: frozenset[Refusal] = frozenset({"stale-evidence"})

Request = vnode_pb2.ForwardRequest | vnode_pb2.BackwardRequest
#: (vnode, replica) -> (pnode, epoch) of the slot's allocation now; None: not placed.
Hosts = Callable[[str, int], "tuple[str, int] | None"]


def _method(name: str) -> str:
    service = vnode_pb2.DESCRIPTOR.services_by_name["VNodeService"]
    return f"/{service.full_name}/{service.methods_by_name[name].name}"


FORWARD = _method("Forward")
BACKWARD = _method("Backward")


class Refused(Exception):
    """The evidence does not prove the accusation; `reason` is a `Refusal`."""

    def __init__(self, reason: Refusal, message: str) -> None:
        super().__init__(message)
        self.reason: Refusal = reason
        self.message = message

    @property
    def blameless(self) -> bool:
        return self.reason in BLAMELESS


@dataclasses.dataclass(frozen=True)
class Accusation:
    """What a report claims. `position`: the step (int) or the request id (str)."""

    network: str
    job: str
    position: int | str
    forward: bool
    #: The reporter's PNode and its slot (vnode, replica, epoch) that received the results.
    reporter: str
    reporter_slot: tuple[str, int, int]
    #: The accused slot (vnode, replica, epoch).
    subject: tuple[str, int, int]
    #: The part of the step, when it is cut into micro-batches (0: none or the first).
    micro: int = 0


@dataclasses.dataclass(frozen=True)
class Signed:
    """One verified message: who signed it, what it says, and its tensor."""

    pnode: str
    request: Request
    replica: int
    epoch: int
    array: np.ndarray


@dataclasses.dataclass(frozen=True)
class Proven:
    """An accusation the evidence proves: strike `pnode` for `check`."""

    pnode: str
    check: str
    message: str


Mode = Literal["check", "quorum", "dispute"]


def prove(
    accusation: Accusation,
    evidence: Sequence[common_pb2.SignedMessage],
    *,
    mode: Mode,
    verifier: identity.Verifier,
    hosts: Hosts,
    now: dt.datetime,
    max_bytes: int,
    kind: str = "",
    params: Mapping[str, Any] | None = None,
    replicas: int = 1,
) -> Proven | None:
    """What the evidence proves: a PNode to strike (`check`, `quorum`), or None for a
    dispute it proves; raises Refused. `kind`/`params`: the subject VNode's, from the network
    spec; `replicas`: how many replicas of it run now."""
    if not evidence:
        raise Refused("no-evidence", "evidence: an accusation needs the accused's signed result")
    vnode, replica, epoch = accusation.reporter_slot
    held = hosts(vnode, replica)
    if held is None or held[1] != epoch:
        raise Refused(
            "stale-evidence", f"epoch: {vnode} replica {replica} is no longer at epoch {epoch}"
        )
    if held[0] != accusation.reporter:
        raise Refused(
            "evidence-mismatch",
            f"vnode: {vnode} replica {replica} at epoch {epoch} is held by {held[0]!r}, "
            f"not the reporter {accusation.reporter!r}",
        )
    signed = [
        verify(accusation, e, verifier=verifier, hosts=hosts, now=now, max_bytes=max_bytes)
        for e in evidence
    ]
    if mode == "check":
        return failed_check(accusation, signed, kind=kind, params=params or {})
    if mode == "quorum":
        return quorum_loser(accusation, signed, replicas=replicas)
    dispute(accusation, signed)
    return None


def verify(
    accusation: Accusation,
    evidence: common_pb2.SignedMessage,
    *,
    verifier: identity.Verifier,
    hosts: Hosts,
    now: dt.datetime,
    max_bytes: int,
) -> Signed:
    """One message, by the module docstring's table; raises Refused."""
    try:
        signer = verifier.verify(
            evidence.method, evidence.body, evidence.certificate, evidence.signature, now
        )
    except identity.IdentityError as exc:
        reason: Refusal = "stale-evidence" if exc.reason == "Expired" else "bad-evidence"
        raise Refused(reason, f"evidence: {exc}") from None
    expected = FORWARD if accusation.forward else BACKWARD
    if evidence.method != expected:
        raise Refused(
            "evidence-mismatch",
            f"evidence.method: {evidence.method!r}, the report is about {expected}",
        )
    request: Request = (
        vnode_pb2.ForwardRequest() if accusation.forward else vnode_pb2.BackwardRequest()
    )
    try:
        request.ParseFromString(evidence.body)
    except pb_message.DecodeError as exc:
        raise Refused(
            "evidence-mismatch", f"evidence.body: not a {expected} request ({exc})"
        ) from None
    _same(accusation, request)
    vnode, replica, epoch = request.sender_vnode, request.sender_replica, request.sender_epoch
    held = hosts(vnode, replica)
    if held is None or held[1] != epoch:
        now_at = "not placed" if held is None else f"at epoch {held[1]}"
        raise Refused(
            "stale-evidence",
            f"evidence: {vnode} replica {replica} at epoch {epoch} is {now_at} now",
        )
    if signer.kind != "pnode" or signer.name != held[0]:
        raise Refused(
            "wrong-signer",
            f"evidence: signed by {signer.kind} {signer.name!r}, but {vnode} replica {replica} "
            f"at epoch {epoch} is held by pnode {held[0]!r}",
        )
    try:
        array = tensors.decode(request.tensor, max_bytes=max_bytes)
    except tensors.TensorError as exc:
        # A malformed tensor is refused before any check by every agent: never reported.
        raise Refused(
            "unconvincing", f"evidence.body.tensor: {exc}; not a checked result"
        ) from None
    return Signed(signer.name, request, replica, epoch, array)


def _same(accusation: Accusation, request: Request) -> None:
    which = request.WhichOneof("position")
    position: int | str | None = (
        request.step if which == "step" else request.request_id if which else None
    )
    vnode, replica, epoch = accusation.reporter_slot
    pairs: tuple[tuple[str, object, object], ...] = (
        ("job", request.job, accusation.job),
        ("position", position, accusation.position),
        ("micro", request.micro, accusation.micro),
        ("network", request.network, accusation.network),
        ("sender_vnode", request.sender_vnode, accusation.subject[0]),
        ("target_vnode", request.target_vnode, vnode),
        ("target_replica", request.target_replica, replica),
        ("target_epoch", request.target_epoch, epoch),
    )
    for name, got, want in pairs:
        if got != want or type(got) is not type(want):
            raise Refused(
                "evidence-mismatch",
                f"evidence.body.{name}: {got!r}, the report names {want!r}",
            )


def failed_check(
    accusation: Accusation,
    signed: Sequence[Signed],
    *,
    kind: str,
    params: Mapping[str, Any],
) -> Proven:
    """A failed result check, proven by the one refused message, run again here."""
    if len(signed) != 1:
        raise Refused(
            "evidence-mismatch",
            f"evidence: a failed check is proven by the one refused request, got {len(signed)}",
        )
    found = signed[0]
    subject_vnode, subject_replica, subject_epoch = accusation.subject
    if (found.replica, found.epoch) != (subject_replica, subject_epoch):
        raise Refused(
            "evidence-mismatch",
            f"evidence.body: sent by {subject_vnode} replica {found.replica} at epoch "
            f"{found.epoch}, the report accuses replica {subject_replica} at epoch {subject_epoch}",
        )
    try:
        if accusation.forward:
            training = isinstance(accusation.position, int)
            checks.check_forward(kind, params, found.array, training=training)
        else:
            checks.check_gradient(found.array)
    except checks.CheckFailed as failed:
        return Proven(found.pnode, failed.check, failed.message)
    raise Refused(
        "unconvincing",
        f"evidence: the result of {subject_vnode} replica {subject_replica} passes every check "
        "when checked again",
    )


def quorum_loser(accusation: Accusation, signed: Sequence[Signed], *, replicas: int) -> Proven:
    """The subject replica's result loses to a majority of `replicas` (or of the results
    given, if more: a tiebreaker) among the signed results, compared here."""
    results = _by_replica(signed)
    subject_vnode, subject_replica, subject_epoch = accusation.subject
    mine = results.get(subject_replica)
    if mine is None or mine.epoch != subject_epoch:
        raise Refused(
            "evidence-mismatch",
            f"evidence: no signed result of {subject_vnode} replica {subject_replica} at epoch "
            f"{subject_epoch}, the replica accused",
        )
    total = max(replicas, len(results))
    decision = quorum.decide({r: s.array for r, s in results.items()}, expected=total)
    if decision.verdict is not quorum.Verdict.ACCEPTED or subject_replica not in decision.losers:
        raise Refused(
            "unconvincing",
            f"evidence: compared here, the {len(results)} signed results of {subject_vnode} "
            f"give no majority of {total} against replica {subject_replica}",
        )
    winners = ", ".join(str(w) for w in sorted(int(str(w)) for w in decision.winners))
    return Proven(
        mine.pnode,
        "quorum",
        f"its result of {subject_vnode} replica {subject_replica} disagrees with the signed "
        f"results of replicas {winners} (of {total})",
    )


def dispute(accusation: Accusation, signed: Sequence[Signed]) -> None:
    """At least two signed results of the subject VNode that disagree; raises Refused."""
    results = list(_by_replica(signed).values())
    for i, a in enumerate(results):
        for b in results[i + 1 :]:
            if not quorum.agree(a.array, b.array):
                return
    raise Refused(
        "unconvincing",
        f"evidence: the {len(results)} signed results of {accusation.subject[0]} all agree "
        "when compared here",
    )


def _by_replica(signed: Sequence[Signed]) -> dict[int, Signed]:
    """One result per replica (the last, as an agent keeps it)."""
    return {s.replica: s for s in signed}
