"""Resource arithmetic: what a PNode has allocated once a VNode's resources are charged to it
or released from it. The one place that says how; everything that counts capacity calls it.

Two representations use it: the scheduler's `NodeView` (plain ints and tuples, read many
times per placement) and the PNode record the network applier writes in the placement's
transaction (`status.allocated`). The network plan and `dcnctl explain placement` charge
NodeViews too. Each converts to `Amounts`, charges, and converts back, so the plan, the
scheduler, the explanation and the record can never disagree on what a charge does.

The rules: a charge adds; a release subtracts but never below zero (a release of more than
was charged leaves nothing allocated, not a negative amount that would let the PNode take
more than it holds); accelerators are counted by type, merged, zero counts dropped, sorted
by type, so equal inventories compare and hash equal.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import TypeAlias

from api.resources import network as network_model
from api.resources import pnode as pnode_model

#: Accelerator counts by type: sorted by type, one entry per type, no zero counts.
Accelerators: TypeAlias = tuple[tuple[str, int], ...]


@dataclasses.dataclass(frozen=True, slots=True)
class Amounts:
    """CPU (millicores), memory (bytes) and accelerators: a charge, a capacity, or what is
    allocated."""

    cpu: int = 0
    memory: int = 0
    accelerators: Accelerators = ()

    def named(self) -> dict[str, int]:
        """Every amount by the name a message gives it: "cpu", "memory", "accelerator a100"."""
        found = {"cpu": self.cpu, "memory": self.memory}
        found.update((f"accelerator {kind}", number) for kind, number in self.accelerators)
        return found


def accelerators(items: Iterable[tuple[str, int]]) -> Accelerators:
    """(type, count) pairs merged by type, zero counts dropped, sorted by type."""
    totals: dict[str, int] = {}
    for kind, number in items:
        totals[kind] = totals.get(kind, 0) + number
    return tuple(sorted((kind, number) for kind, number in totals.items() if number))


def of_request(resources: network_model.ResourceRequest) -> Amounts:
    """What a VNode's resource request charges."""
    accelerator = resources.accelerator
    charge = [] if accelerator is None else [(accelerator.type, accelerator.count)]
    return Amounts(cpu=resources.cpu, memory=resources.memory, accelerators=accelerators(charge))


def of_capacity(capacity: pnode_model.Capacity) -> Amounts:
    """A PNode's declared capacity, or its `status.allocated`, as amounts."""
    return Amounts(
        cpu=capacity.cpu,
        memory=capacity.memory,
        accelerators=accelerators((a.type, a.count) for a in capacity.accelerators),
    )


def charged(allocated: Amounts, change: Amounts, sign: int) -> Amounts:
    """`allocated` with `change` charged (sign +1) or released (sign -1); no amount goes
    below zero."""
    if sign not in (1, -1):
        raise ValueError(f"charged: sign must be +1 (charge) or -1 (release), got {sign}")
    totals = dict(allocated.accelerators)
    for kind, number in change.accelerators:
        totals[kind] = max(0, totals.get(kind, 0) + sign * number)
    return Amounts(
        cpu=max(0, allocated.cpu + sign * change.cpu),
        memory=max(0, allocated.memory + sign * change.memory),
        accelerators=accelerators(totals.items()),
    )
