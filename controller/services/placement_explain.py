"""ExplainPlacement's answer: one slot's placement decision, re-derived now.

The network loop records no per-PNode story for its decisions (that would be a store write
per placement for a question rarely asked). Instead the decision is re-derived on demand
from the same pure scheduler, the network's seed and the current snapshot of PNodes, with
the slot's own allocation taken off its PNode first (so the PNode it sits on is judged as
if the slot were being placed now, not as if it had to fit twice). The request is the one
the network plan makes for the slot, built by the plan's own code
(`network_plan.slot_request`: the same siblings to avoid, the same neighbours to be near),
so the explanation never describes a request the loop would not make. The summary says
what it is: what the scheduler would decide now for this slot alone, which can differ from
what the loop decided earlier, in a batch, against another snapshot.

Every filter is run on every PNode the scheduler evaluated, not just the first that failed
(the scheduler stops at the first), so `dcnctl explain` shows all that is wrong with a PNode.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from api.dcnr.v1 import network_pb2
from api.resources import allocation as allocation_model
from api.resources import amounts
from api.resources import network as net_model
from api.resources import pnode as pnode_model
from controller import errors as faults
from reconcilers import network_plan, slots
from scheduler import config as scheduler_config
from scheduler import explain, filters, model, placement

#: PNodes listed one by one; the rest are counted in the summary only.
MAX_LISTED_PNODES = 500


def explain_slot(
    network: net_model.Network,
    vnode_name: str,
    replica: int,
    *,
    pnodes: Sequence[pnode_model.PNode],
    allocations: Sequence[allocation_model.Allocation],
    config: scheduler_config.Config,
) -> network_pb2.ExplainPlacementResponse:
    vnode = network.vnode(vnode_name)
    if vnode is None:
        known = ", ".join(v.name for v in network.spec.vnodes[:20])
        raise faults.NotFound(
            f"vnode: network {network.name!r} has no vnode {vnode_name!r} (its vnodes: {known}"
            f"{' ...' if len(network.spec.vnodes) > 20 else ''})",
        )
    running = network.replicas_of(vnode)
    if replica >= running:
        raise faults.FieldInvalid(
            "replica", replica, f"must be below the vnode's replicas ({running})"
        )
    slot = allocation_model.slot_name(network.name, vnode.name, replica)
    current = next((a for a in allocations if a.name == slot), None)
    request = network_plan.slot_request(
        network, vnode, replica, allocations=list(allocations), pnodes=list(pnodes)
    )
    snapshot = _without(model.snapshot_of(pnodes), current)
    # The listing limits change no decision (scheduler.config), only how much is shown.
    full = dataclasses.replace(
        config, max_explained_rejections=MAX_LISTED_PNODES, max_explained_scores=MAX_LISTED_PNODES
    )
    seed = slots.seed_for(network)
    decision = placement.place(request, snapshot, seed=seed, config=full)
    story = decision.explanation
    rows = [_row(request, snapshot, story, verdict) for verdict in story.verdicts]
    return network_pb2.ExplainPlacementResponse(
        placed_on="" if current is None else current.spec.pnode,
        summary=_summary(decision, current),
        reasons=[
            network_pb2.ReasonCount(reason=reason, count=count)
            for reason, count in explain.sorted_reasons(story.reasons)
        ],
        pnodes=rows,
        # The seed is a 64-bit unsigned digest; the field is signed: same bits.
        seed=seed - (1 << 64) if seed >= 1 << 63 else seed,
    )


def _without(
    snapshot: model.Snapshot, current: allocation_model.Allocation | None
) -> model.Snapshot:
    """The snapshot with the slot's own allocation released from its PNode."""
    if current is None or snapshot.node(current.spec.pnode) is None:
        return snapshot
    charge = amounts.of_request(current.spec.resources)
    return model.Snapshot(
        node.charged(charge, -1) if node.name == current.spec.pnode else node
        for node in snapshot.nodes
    )


def _row(
    request: model.Request,
    snapshot: model.Snapshot,
    story: explain.Explanation,
    verdict: explain.NodeVerdict,
) -> network_pb2.PNodePlacement:
    node = snapshot.node(verdict.pnode)
    results = []
    if node is not None:
        for check in filters.HARD:
            reason = check(request, node)
            results.append(
                network_pb2.FilterResult(
                    filter=check.__name__, passed=reason is None, reason=reason or ""
                )
            )
    if verdict.reason is not None and not any(r.reason == verdict.reason for r in results):
        # A soft rejection (the trust floor for critical VNodes) is no hard filter.
        results.append(
            network_pb2.FilterResult(filter="trust_floor", passed=False, reason=verdict.reason)
        )
    feasible = verdict.reason is None
    scores = []
    if feasible:
        scores = [
            network_pb2.ScoreResult(scorer=name, raw=value, normalized=value, weight=weight)
            for (name, value), weight in zip(
                story.scores_of(verdict).items(), story.weights, strict=True
            )
        ]
    return network_pb2.PNodePlacement(
        pnode_id=verdict.pnode,
        feasible=feasible,
        filters=results,
        scores=scores,
        total_score=verdict.total or 0.0,
        sampled=feasible,
    )


def _summary(decision: explain.Decision, current: allocation_model.Allocation | None) -> str:
    story = decision.explanation
    where = "not placed now" if current is None else f"placed on {current.spec.pnode!r} now"
    head = (
        f"{story.request}: {where}. Re-derived at this moment against {story.pnodes} pnodes "
        "(not the recorded decision): "
    )
    if isinstance(decision, explain.Unschedulable):
        verdict = decision.message
    else:
        verdict = (
            f"would place on {decision.pnode!r} (score {decision.score:.3f}); "
            f"{story.feasible} of {story.evaluated} evaluated pnodes feasible"
        )
    notes = "".join(f"; {note}" for note in story.notes)
    unlisted = f"; {story.unlisted} more pnodes not listed" if story.unlisted else ""
    return head + verdict + notes + unlisted
