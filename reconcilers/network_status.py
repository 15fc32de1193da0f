"""The Network's status as it will be once its plan is applied (pure).

Status describes the state after the plan, not before it: a reconcile that places every
slot reports Ready at once instead of Allocating until some later pass looks again.

Phases, first match wins:

    Terminating   the network has a deletion timestamp
    Degraded      it was Ready (or Degraded) before, and now some slot is unplaced, on a
                  PNode that is not Ready, or unschedulable
    Pending       no slot has a PNode at all
    Allocating    some slot is unplaced, on a PNode that is not Ready, or unschedulable
    Ready         every slot is placed on a Ready PNode

Conditions keep their last_transition_time while their status stays the same, so writing
status only when it changed (the reconciler compares) really means "when it changed".
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime

from api.resources import meta
from api.resources import network as network_model
from api.resources import pnode as pnode_model
from reconcilers import slots
from scheduler import explain

READY = "Ready"
UNSCHEDULABLE = "Unschedulable"
#: Groups of identical unschedulable messages listed in the condition; the rest are counted.
MAX_LISTED_GROUPS = 3
MAX_LISTED_SLOTS = 3


def compute(
    network: network_model.Network,
    final: Mapping[str, str | None],
    remembered: Mapping[str, int],
    pnodes: Mapping[str, pnode_model.PNode],
    unschedulable: Mapping[str, explain.Unschedulable],
    *,
    now: datetime,
) -> network_model.NetworkStatus:
    """`final`: every desired slot -> its PNode after the plan (None: unplaced).
    `remembered`: epochs of slots the plan stops that must not be reused."""
    old = network.status
    desired = len(final)
    placed = [pnode for pnode in final.values() if pnode is not None]
    ready = sum(1 for name in placed if _ready(pnodes.get(name)))
    troubled = ready < desired or bool(unschedulable)
    if network.metadata.deletion_timestamp is not None:
        phase: network_model.NetworkPhase = "Terminating"
    elif troubled and old.phase in ("Ready", "Degraded"):
        phase = "Degraded"
    elif not placed:
        phase = "Pending"
    elif troubled:
        phase = "Allocating"
    else:
        phase = "Ready"

    generation = network.metadata.generation
    counts = f"{ready}/{desired} slots ready"
    if phase == "Ready":
        ready_condition = _condition(old, READY, "True", "SlotsReady", counts, generation, now)
    else:
        detail = counts
        unplaced = desired - len(placed)
        if unplaced:
            detail += f", {unplaced} unplaced"
        if len(placed) - ready:
            detail += f", {len(placed) - ready} on pnodes not ready"
        ready_condition = _condition(old, READY, "False", phase, detail, generation, now)
    if unschedulable:
        unschedulable_condition = _condition(
            old, UNSCHEDULABLE, "True", "Unschedulable", message(unschedulable), generation, now
        )
    else:
        unschedulable_condition = _condition(
            old, UNSCHEDULABLE, "False", "AllSlotsPlaced", "", generation, now
        )
    return network_model.NetworkStatus(
        phase=phase,
        observed_generation=generation,
        desired_slots=desired,
        ready_slots=ready,
        conditions=[ready_condition, unschedulable_condition],
        slot_epochs=_slot_epochs(network, final, remembered),
        # Not the loop's to change: carried over from the copy read, so a write from a stale
        # copy conflicts (resource_version) rather than wiping a newer request.
        tiebreakers=list(old.tiebreakers),
        tiebreak_generation=old.tiebreak_generation,
    )


def message(unschedulable: Mapping[str, explain.Unschedulable]) -> str:
    """The scheduler's counted message per group of slots that share it, e.g.
    "0/12 pnodes available: 7 insufficient memory, 5 lack accelerator a100 (slots n.a.0,
    n.a.1)"; groups by size, largest first."""
    groups: dict[str, list[str]] = {}
    for slot in sorted(unschedulable):
        groups.setdefault(unschedulable[slot].message, []).append(slot)
    ordered = sorted(groups.items(), key=lambda item: (-len(item[1]), item[0]))
    parts = []
    for text, members in ordered[:MAX_LISTED_GROUPS]:
        listed = ", ".join(members[:MAX_LISTED_SLOTS])
        more = len(members) - MAX_LISTED_SLOTS
        if more > 0:
            listed += f" and {more} more"
        noun = "slot" if len(members) == 1 else "slots"
        parts.append(f"{text} ({noun} {listed})")
    rest = len(ordered) - MAX_LISTED_GROUPS
    if rest > 0:
        parts.append(f"and {rest} other reasons")
    return "; ".join(parts)


def _ready(pnode: pnode_model.PNode | None) -> bool:
    return pnode is not None and pnode.status.phase == "Ready"


def _condition(
    old: network_model.NetworkStatus,
    kind: str,
    status: meta.ConditionStatus,
    reason: str,
    text: str,
    generation: int,
    now: datetime,
) -> meta.Condition:
    return meta.condition(
        old.conditions,
        type=kind,
        status=status,
        reason=reason,
        message=text,
        now=now,
        observed_generation=generation,
    )


def _slot_epochs(
    network: network_model.Network,
    final: Mapping[str, str | None],
    remembered: Mapping[str, int],
) -> dict[str, int]:
    """Epochs of slots without an allocation whose VNode is still in the spec."""
    if network.metadata.deletion_timestamp is not None:
        return dict(network.status.slot_epochs)
    vnodes = {v.name for v in network.spec.vnodes}
    epochs = {
        slot: epoch
        for slot, epoch in network.status.slot_epochs.items()
        if slots.vnode_of_slot(slot) in vnodes and final.get(slot) is None
    }
    for slot, epoch in remembered.items():
        if slots.vnode_of_slot(slot) in vnodes:
            epochs[slot] = max(epoch, epochs.get(slot, 0))
    return dict(sorted(epochs.items()))
