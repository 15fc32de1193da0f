"""What the network loop tells people it did: an event per applied action, and one per pass
that leaves slots unschedulable. Pure: actions in, `base.Occurrence`s out.

Messages name the slot and the PNodes but no epoch or count, so a slot that flaps between
the same two PNodes is one event with a count (the recorder aggregates equal messages), not
a new line per move.
"""

from __future__ import annotations

from reconcilers import base, network_actions


def for_action(network: str, action: network_actions.Action) -> base.Occurrence | None:
    def event(type_: str, reason: str, message: str) -> base.Occurrence:
        return base.Occurrence("Network", network, type_, reason, message)

    if isinstance(action, network_actions.Place):
        return event("Normal", "Placed", f"placed {action.slot} on pnode {action.pnode}")
    if isinstance(action, network_actions.Migrate):
        old = action.allocation.spec.pnode
        return event(
            "Warning",
            "Migrated",
            f"moved {action.allocation.name} from pnode {old} to {action.to_pnode}:"
            f" {action.reason}",
        )
    if isinstance(action, network_actions.Reissue):
        return event(
            "Normal",
            "Reissued",
            f"re-issued {action.allocation.name} on pnode {action.allocation.spec.pnode}:"
            f" {action.reason}",
        )
    if isinstance(action, network_actions.Stop):
        return event(
            "Normal",
            "Stopped",
            f"stopped {action.allocation.name} on pnode {action.allocation.spec.pnode}:"
            f" {action.reason}",
        )
    return None  # Keep: nothing happened


def unschedulable(network: str, message: str) -> base.Occurrence:
    """Kubernetes' FailedScheduling: the scheduler's counted reasons, once per pass."""
    return base.Occurrence("Network", network, "Warning", "FailedScheduling", message)
