"""Judging a disputed result once a tiebreaker settled the same computation.

A dispute is replicas of a VNode disagreeing with no majority (1-1): nobody can be struck
then. The request is retried with a tiebreaker replica, and if the retry settles a majority
for the SAME inputs, every disputed result that differs from it is a lie its producer told
and signed: results are deterministic functions of the inputs and the weights. Without
this, a liar caught in a dispute was struck only if it lied again in the retry, so a
liar lying on a fraction of its results often escaped.

Pure: the caller (controller.jobs.inference) hands in the two attempts of one VNode, each
with the verified results of its replicas and a key of the inputs they computed from; this
module says who is proven wrong. What makes it safe for honest PNodes (`judge` refuses to
judge otherwise, returning nobody):

- both attempts are of the same network and VNode, and their `inputs` keys are known (not
  None) and equal: the caller's key names the request's input and the epoch of every
  upstream slot that computed it, and is None when an upstream VNode computed without
  being compared (a single replica could have sent each replica a different input);
- the settled attempt has a strict majority of its replicas (`api.quorum.decide`, the same
  tolerance every comparison uses) among its signed results;
- a disputed result is judged only if it was signed by its producer (its signature verified,
  `from_evidence`) and the same replica at the same epoch (so the same PNode, weights and
  slot) took part in the settled attempt: a slot that moved in between is not judged.

A disputed result that agrees with the majority earns nothing here: it was credited, or
not, by the vote it took part in.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Callable, Hashable, Sequence

import numpy as np
from google.protobuf import message as pb_message

from api import identity, quorum, tensors
from api.dcnr.v1 import common_pb2, vnode_pb2
from controller.trust import evidence as evidence_mod

#: (vnode, replica) -> (pnode, epoch) of the slot's allocation now; None: not placed.
Hosts = Callable[[str, int], "tuple[str, int] | None"]


@dataclasses.dataclass(frozen=True)
class Result:
    """One replica's result of the VNode: who produced it, at which slot epoch, the value,
    and whether its producer's signature over it was verified."""

    pnode: str
    replica: int
    epoch: int
    array: np.ndarray
    signed: bool


@dataclasses.dataclass(frozen=True)
class Attempt:
    """One computation of `vnode` at `position`: its replicas' results (`replicas`: how
    many took part) and `inputs`, a key of what they computed from (None: not known to be
    one value for every replica)."""

    network: str
    vnode: str
    position: int | str
    inputs: Hashable | None
    replicas: int
    results: tuple[Result, ...]


def judge(disputed: Attempt, settled: Attempt) -> list[evidence_mod.Proven]:
    """The producers of `disputed` results proven wrong by `settled`'s majority (module
    docstring); empty when nothing can be judged."""
    if (disputed.network, disputed.vnode) != (settled.network, settled.vnode):
        return []
    if disputed.inputs is None or disputed.inputs != settled.inputs:
        return []
    majority = {r.replica: r for r in settled.results if r.signed}
    decision = quorum.decide(
        {r: found.array for r, found in majority.items()},
        expected=max(settled.replicas, len(majority), 1),
    )
    if decision.verdict is not quorum.Verdict.ACCEPTED or decision.accepted is None:
        return []
    winners = sorted(int(str(w)) for w in decision.winners)
    proven: list[evidence_mod.Proven] = []
    for found in disputed.results:
        again = majority.get(found.replica)
        if not found.signed or again is None or again.epoch != found.epoch:
            continue
        if again.pnode != found.pnode:
            continue
        if quorum.agree(found.array, decision.accepted):
            continue
        proven.append(
            evidence_mod.Proven(
                found.pnode,
                "quorum",
                f"its signed result of {disputed.vnode} replica {found.replica} at "
                f"{disputed.position!r}, disputed, disagrees with the signed results of "
                f"replicas {', '.join(map(str, winners))} (of {settled.replicas}) that settled "
                f"the same inputs at {settled.position!r}",
            )
        )
    return proven


def from_evidence(
    evidence: Sequence[common_pb2.SignedMessage],
    *,
    network: str,
    vnode: str,
    position: int | str,
    verifier: identity.Verifier,
    hosts: Hosts,
    now: dt.datetime,
    max_bytes: int,
) -> tuple[Result, ...]:
    """The Forward results of `vnode` at `position` among `evidence`, each checked as
    `controller.trust.evidence.verify` checks an accusation's: the signature and
    certificate verify, the signer holds the sender slot at the body's epoch. A message
    that fails any of it is kept unsigned (`Result.signed` False: judged never), or dropped
    when it is not a result of `vnode` at `position` at all."""
    found: dict[int, Result] = {}
    for message in evidence:
        request = vnode_pb2.ForwardRequest()
        try:
            request.ParseFromString(message.body)
        except pb_message.DecodeError:
            continue
        which = request.WhichOneof("position")
        at = request.step if which == "step" else request.request_id if which else None
        if (
            message.method != evidence_mod.FORWARD
            or request.network != network
            or request.sender_vnode != vnode
            or at != position
            or type(at) is not type(position)
        ):
            continue
        try:
            array = tensors.decode(request.tensor, max_bytes=max_bytes)
        except tensors.TensorError:
            continue
        held = hosts(vnode, request.sender_replica)
        signed = _signed_by_holder(message, held, request.sender_epoch, verifier, now)
        found[request.sender_replica] = Result(
            held[0] if held is not None else "",
            request.sender_replica,
            request.sender_epoch,
            array,
            signed,
        )
    return tuple(found[r] for r in sorted(found))


def _signed_by_holder(
    message: common_pb2.SignedMessage,
    held: tuple[str, int] | None,
    epoch: int,
    verifier: identity.Verifier,
    now: dt.datetime,
) -> bool:
    if held is None or held[1] != epoch:
        return False
    try:
        signer = verifier.verify(
            message.method, message.body, message.certificate, message.signature, now
        )
    except identity.IdentityError:
        return False
    return signer.kind == "pnode" and signer.name == held[0]
