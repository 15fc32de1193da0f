"""Timings and limits of the control plane, in one place, every one overridable.

The defaults are chosen so that a dead PNode's VNodes are re-placed and resolvable within
10 s (DESIGN.md): the lease expires at most `lease_duration` after the last heartbeat that
reached the store, the PNode is Lost `lost_grace` later, and the loops react at once
because each returns `requeue_after` = time until its next transition.
"""

from __future__ import annotations

import dataclasses
import math

from api import version

#: This orchestrator's version: in every response header and in each replica's record.
SERVER_VERSION = version.current()


def _positive(name: str, value: float) -> None:
    if not (value > 0 and math.isfinite(value)):
        raise ValueError(f"{name}: must be a positive number of seconds, got {value!r}")


@dataclasses.dataclass(frozen=True, slots=True)
class ControlPlaneConfig:
    heartbeat_interval: float = 1.0
    lease_duration: float = 4.0
    #: NotReady for this long → Lost: its allocations are re-placed.
    lost_grace: float = 2.0
    #: Lost for this long (and holding no allocations) → the PNode record is deleted.
    lost_retention: float = 3600.0
    #: A PNode that registered but never renewed its lease (no heartbeat ever reached the
    #: orchestrator: "pending") is deleted this long after it became Lost, instead of
    #: `lost_retention`: anonymous registrations that never come alive are gone within
    #: minutes (lease + grace + this, about 126 s by default).
    pending_retention: float = 120.0
    #: New registrations are refused (RESOURCE_EXHAUSTED) while this many pending PNodes
    #: exist; re-registrations of existing PNodes are never refused by it.
    max_pending_pnodes: int = 1000
    #: The in-memory view follows the store's change feed this often (other replicas'
    #: writes reach it within this).
    view_refresh: float = 0.25
    #: ... and resyncs with the store this often anyway (every record's version listed, the
    #: changed ones read): the safety net under the feed.
    view_resync: float = 60.0
    #: Replica membership lease.
    replica_lease: float = 5.0
    #: Full resync of every loop (the level-triggered safety net).
    resync_every: float = 30.0
    #: Jobs are listed this often, so one created through another replica reaches its
    #: owner's job loop at once instead of at the next resync.
    job_poll: float = 0.5
    #: A store call in flight for longer than this (or one that failed without an answer)
    #: starts a period in which this replica could not observe the store; leases do not run
    #: during it (`controller.state.store_watch`).
    store_stall_after: float = 1.0
    #: At most this much unobserved time is added to a lease or a grace: past it, a store
    #: that stays unreachable no longer holds a dead PNode's lease open. 0: off (leases
    #: run through stalls, as before issue 16).
    store_stall_max: float = 10.0
    #: Retry placement of unschedulable slots this often (PNodes joining also trigger it).
    unschedulable_retry: float = 5.0
    #: Events (`dcnctl get events`) are forgotten this long after their last occurrence.
    event_ttl: float = 3600.0
    #: An allocation Pending this long on a Ready PNode whose lease holds gets the PNode's
    #: assignment set published again (`controller.state.assignment_repair`).
    pending_repair_after: float = 10.0
    workers_per_loop: int = 4

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            if field.name not in ("workers_per_loop", "max_pending_pnodes", "store_stall_max"):
                _positive(field.name, getattr(self, field.name))
        if not (self.store_stall_max >= 0 and math.isfinite(self.store_stall_max)):
            raise ValueError(
                f"store_stall_max: must be 0 (off) or a positive number of seconds, "
                f"got {self.store_stall_max!r}"
            )
        if self.heartbeat_interval >= self.lease_duration:
            raise ValueError(
                f"heartbeat_interval ({self.heartbeat_interval}) must be shorter than "
                f"lease_duration ({self.lease_duration}), or every PNode would expire"
            )
        if self.max_pending_pnodes < 1:
            raise ValueError(
                f"max_pending_pnodes: must be at least 1, got {self.max_pending_pnodes}"
            )
        if self.workers_per_loop < 1:
            raise ValueError(f"workers_per_loop: must be at least 1, got {self.workers_per_loop}")

    @property
    def lease_persist_every(self) -> float:
        """Renewals reach the store at most this often per PNode (DESIGN: lease/3)."""
        return self.lease_duration / 3
