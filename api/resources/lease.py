"""The PNode lease: a tiny record an agent's heartbeats renew, apart from the PNode itself.

Kept out of the PNode record for the reason Kubernetes moved node heartbeats into Lease
objects: renewals are the most frequent write in the system, and on their own small record
they never conflict with the placements that update a PNode's capacity accounting, and cost
one small item write instead of rewriting the whole PNode.

`expiry` is the one rule for when a PNode's lease runs out; the view's liveness
(`controller.state.liveness`) and the lifecycle loop (`reconcilers.pnode`) both use it,
moved later by `held_through` for the time the judging replica could not observe the store
(a stalled store is the orchestrator's problem, not the PNodes').
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import ClassVar, Literal

from pydantic import Field

from api.resources.meta import Model, Resource


class LeaseSpec(Model):
    #: The PNode incarnation that holds the lease; a renewal from another one is fenced.
    incarnation: int = Field(default=0, ge=0)
    renew_time: datetime
    duration_seconds: float = Field(gt=0)


class PNodeLease(Resource):
    """Named like its PNode."""

    KIND: ClassVar[str] = "PNodeLease"
    PLURAL: ClassVar[str] = "pnodeleases"

    kind: Literal["PNodeLease"] = "PNodeLease"
    spec: LeaseSpec

    def expires_at(self) -> datetime:
        return self.spec.renew_time + timedelta(seconds=self.spec.duration_seconds)


def expiry(
    stored: PNodeLease | None,
    *,
    incarnation: int,
    local_renewal: datetime | None,
    duration: float,
) -> datetime | None:
    """When the lease of PNode incarnation `incarnation` expires; None if it has none.

    The newer of two renewals counts: the stored lease's, if it belongs to that incarnation
    (a lease of another one is fenced), and `local_renewal`, one this replica accepted but
    has not persisted yet, which the caller gives only if it belongs to that incarnation.
    Each counts for `duration` seconds. Callers choose it: the view grants its configured
    `lease_duration` (what the heartbeat reply told the agent); the lifecycle loop honours
    the stored lease's `duration_seconds` (what the replica that wrote it granted). The two
    agree whenever all replicas run one configuration, but that is not guaranteed, so each
    keeps its own.
    """
    renewed: datetime | None = None
    if stored is not None and stored.spec.incarnation == incarnation:
        renewed = stored.spec.renew_time
    if local_renewal is not None:
        renewed = local_renewal if renewed is None else max(renewed, local_renewal)
    if renewed is None:
        return None
    return renewed + timedelta(seconds=duration)


@dataclasses.dataclass(frozen=True, slots=True)
class Unobserved:
    """A period in which one replica could not complete a store round trip: from its last
    successful one (`start`) to the next (`end`; for a period still going on, now)."""

    start: datetime
    end: datetime


def held_through(
    deadline: datetime,
    *,
    since: datetime,
    unobserved: Iterable[Unobserved],
    most: float,
) -> datetime:
    """`deadline` (of a clock that started at `since`) moved later by the unobserved time
    that began before it ran out, at most `most` seconds in all.

    The clock stops while the judging replica was blind: renewals it could not read, and
    renewals the heartbeats' replica could not write, must not count against the PNode. A
    period that began after the (moved) deadline does not move it: the deadline was seen
    to pass. Periods may overlap; time is counted once. `most` bounds what a store that
    stays unreachable can hold open: past it, a lease runs out as if observed.
    """
    extra = timedelta(0)
    counted_to = since
    for period in sorted(unobserved, key=lambda p: p.start):
        start = max(period.start, counted_to)
        if period.end <= start:
            continue
        if start >= deadline + extra:
            break
        extra += period.end - start
        counted_to = period.end
    return deadline + min(extra, timedelta(seconds=max(0.0, most)))
