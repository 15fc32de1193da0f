"""Liveness, judged at the moment of the question: is a PNode's lease holding now?

From the cached lease and this replica's unpersisted renewals (`controller.state.renewals`),
by the one expiry rule (`api.resources.lease.expiry`), each renewal counting for this
replica's configured `lease_duration` — what its heartbeat replies grant. Judged per
question, not kept up to date, so an expired lease is never answered as live, however
fresh the cache.

Endpoints are here because they are the hot path that needs liveness: resolution answers
only replicas on PNodes whose lease holds now (DESIGN invariant 3).
"""

from __future__ import annotations

import dataclasses
from datetime import datetime

from api.resources import lease
from controller.state import cache as cache_mod
from controller.state import renewals as renewals_mod


@dataclasses.dataclass(frozen=True, slots=True)
class Endpoint:
    pnode: str
    address: str
    replica: int
    epoch: int


class Liveness:
    def __init__(
        self, cache: cache_mod.Cache, renewals: renewals_mod.Renewals, *, lease_duration: float
    ) -> None:
        self._cache = cache
        self._renewals = renewals
        self._lease_duration = lease_duration

    def lease_expiry(self, name: str) -> datetime | None:
        """When the PNode's lease of its current incarnation expires; None if it has none."""
        node = self._cache.pnodes.get(name)
        if node is None:
            return None
        incarnation = node.status.incarnation
        return lease.expiry(
            self._cache.leases.get(name),
            incarnation=incarnation,
            local_renewal=self._renewals.at(name, incarnation),
            duration=self._lease_duration,
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
