"""Allocations stranded Pending on a Ready PNode: since when, and which PNodes to repair.

Pure: no I/O and no clock of its own. The runner (`controller.state.assignment_repair`)
hands in what its view holds and the time, and performs what `decide` returns.

An allocation is *stranded* while it is Pending (its agent has not reported it running) for
the PNode's current incarnation, on a PNode that is Ready with a lease that holds. A
healthy agent reports a new VNode within a heartbeat or two; one Pending for longer than
the bound most likely never received it (issue 16: a version shown without its whole set),
so the PNode's assignment set is published again. Level-triggered: whatever the cause,
the set is re-sent once per bound for as long as the allocation stays stranded.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Iterable, Mapping
from typing import NamedTuple

from api.resources import allocation, pnode


class Stranded(NamedTuple):
    """One allocation as it is Pending: a new epoch or PNode is a new wait."""

    slot: str
    pnode: str
    epoch: int


@dataclasses.dataclass(frozen=True, slots=True)
class Repair:
    """Publish `pnode`'s assignment set again: `slot` has been Pending `pending_for` s."""

    pnode: str
    slot: str
    pending_for: float


def stranded(
    pnodes: Mapping[str, pnode.PNode],
    allocations: Iterable[allocation.Allocation],
    live: Collection[str],
) -> list[Stranded]:
    """The allocations Pending for the current incarnation of a Ready PNode in `live`
    (the PNodes whose lease holds now)."""
    found = []
    for alloc in allocations:
        node = pnodes.get(alloc.spec.pnode)
        if (
            alloc.status.phase == "Pending"
            and node is not None
            and node.status.phase == "Ready"
            and node.name in live
            and alloc.spec.pnode_incarnation == node.status.incarnation
        ):
            found.append(Stranded(alloc.name, alloc.spec.pnode, alloc.spec.epoch))
    return found


def observed(
    since: Mapping[Stranded, float], now_stranded: Iterable[Stranded], now: float
) -> dict[Stranded, float]:
    """When each allocation stranded now was first seen so: kept from `since`, `now` for
    the new ones; those no longer stranded are forgotten."""
    return {key: since.get(key, now) for key in now_stranded}


def oldest(since: Mapping[Stranded, float], now: float) -> float:
    """Seconds the longest-stranded allocation has waited (0 when none is)."""
    return max((now - at for at in since.values()), default=0.0)


def decide(
    since: Mapping[Stranded, float],
    now: float,
    *,
    bound: float,
    repaired: Mapping[str, float],
) -> list[Repair]:
    """The PNodes to publish again: each holding an allocation stranded for at least
    `bound` seconds, and not itself repaired within the last `bound` seconds (`repaired`:
    PNode → when), so a PNode costs at most one write per bound however many it holds.
    Named by its longest-stranded allocation; sorted by PNode, for a stable order."""
    worst: dict[str, tuple[float, str]] = {}
    for key, at in since.items():
        waited = now - at
        if waited >= bound and waited > worst.get(key.pnode, (-1.0, ""))[0]:
            worst[key.pnode] = (waited, key.slot)
    return [
        Repair(name, slot, waited)
        for name, (waited, slot) in sorted(worst.items())
        if now - repaired.get(name, float("-inf")) >= bound
    ]
