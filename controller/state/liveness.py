"""Liveness, judged at the moment of the question: is a PNode's lease holding now?

From the cached lease and this replica's unpersisted renewals (`controller.state.renewals`),
by the one expiry rule (`api.resources.lease.expiry`), each renewal counting for this
replica's configured `lease_duration` — what its heartbeat replies grant — and held open
for the time this replica could not observe the store (`lease.held_through`, from
`controller.state.store_watch`), as the lifecycle loop does. Judged per
question, not kept up to date, so an expired lease is never answered as live, however
fresh the cache.

Endpoints are here because they are the hot path that needs liveness: resolution answers
only replicas on PNodes whose lease holds now (DESIGN invariant 3).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta

from api.resources import lease
from controller.state import cache as cache_mod
from controller.state import renewals as renewals_mod


@dataclasses.dataclass(frozen=True, slots=True)
class Endpoint:
    pnode: str
    address: str
    replica: int
    epoch: int


Unobserved = Callable[[], Sequence[lease.Unobserved]]


def _none() -> Sequence[lease.Unobserved]:
    return ()


class Liveness:
    def __init__(
        self,
        cache: cache_mod.Cache,
        renewals: renewals_mod.Renewals,
        *,
        lease_duration: float,
        unobserved: Unobserved | None = None,
        stall_max: float = 0.0,
    ) -> None:
        """`unobserved()`: the periods this replica could not observe the store; at most
        `stall_max` seconds of them hold a lease open."""
        self._cache = cache
        self._renewals = renewals
        self._lease_duration = lease_duration
        self._unobserved = unobserved or _none
        self._stall_max = stall_max

    def lease_expiry(self, name: str) -> datetime | None:
        """When the PNode's lease of its current incarnation expires; None if it has none."""
        node = self._cache.pnodes.get(name)
        if node is None:
            return None
        incarnation = node.status.incarnation
        expiry = lease.expiry(
            self._cache.leases.get(name),
            incarnation=incarnation,
            local_renewal=self._renewals.at(name, incarnation),
            duration=self._lease_duration,
        )
        if expiry is None:
            return None
        return lease.held_through(
            expiry,
            since=expiry - timedelta(seconds=self._lease_duration),
            unobserved=self._unobserved(),
            most=self._stall_max,
        )

    def is_live(self, name: str, now: datetime) -> bool:
        node = self._cache.pnodes.get(name)
        if node is None or node.status.phase != "Ready":
            return False
        expiry = self.lease_expiry(name)
        return expiry is not None and expiry > now

    def endpoints(self, network_name: str, vnode: str, now: datetime) -> list[Endpoint]:
        """Live endpoints of a VNode: current allocations on PNodes whose lease holds now."""
        found = []
        for alloc in self._cache.allocations_of_vnode(network_name, vnode):
            spec = alloc.spec
            if not self.is_live(spec.pnode, now):
                continue
            node = self._cache.pnodes[spec.pnode]
            if spec.pnode_incarnation != node.status.incarnation:
                continue  # its agent dropped this epoch when it re-registered
            found.append(Endpoint(spec.pnode, node.spec.address, spec.replica, spec.epoch))
        return sorted(found, key=lambda e: e.replica)
