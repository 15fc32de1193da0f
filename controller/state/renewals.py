"""Lease renewals this replica accepted and has not persisted yet: one store, read by all.

A heartbeat renews its PNode's lease the moment it is accepted, but the renewal reaches the
store only later, coalesced (`controller.state.leases`). Until then this is where it lives,
and every reader of liveness reads it here: the view's liveness (heartbeats, resolution),
the lease keeper (what to write) and, through the server's `local_renewal` wiring, the
PNode lifecycle loop. The lease keeper removes what it has persisted (or found moot), so the
store holds only what the stored leases do not yet show.

Kept per PNode: the newest renewal, ordered by (incarnation, time). An older incarnation's
renewal never displaces a newer one's (a late heartbeat of a fenced agent must not), and a
renewal counts only for the incarnation it was made for (`at`).
"""

from __future__ import annotations

import dataclasses
from datetime import datetime


@dataclasses.dataclass(frozen=True, slots=True)
class Renewal:
    incarnation: int
    at: datetime


class Renewals:
    def __init__(self) -> None:
        self._newest: dict[str, Renewal] = {}

    def note(self, pnode: str, incarnation: int, at: datetime) -> None:
        """A renewal the service accepted; the newest per PNode (and incarnation) is kept."""
        current = self._newest.get(pnode)
        if current is None or (incarnation, at) > (current.incarnation, current.at):
            self._newest[pnode] = Renewal(incarnation, at)

    def at(self, pnode: str, incarnation: int) -> datetime | None:
        """The newest unpersisted renewal of that incarnation, if any."""
        renewal = self._newest.get(pnode)
        if renewal is None or renewal.incarnation != incarnation:
            return None
        return renewal.at

    def get(self, pnode: str) -> Renewal | None:
        return self._newest.get(pnode)

    def items(self) -> list[tuple[str, Renewal]]:
        """A snapshot, safe to iterate while entries are dropped."""
        return list(self._newest.items())

    def drop(self, pnode: str) -> None:
        """Forget the PNode's renewal: persisted, or never to be (deleted, fenced)."""
        self._newest.pop(pnode, None)

    def persisted(self, pnode: str, incarnation: int, renew_time: datetime) -> None:
        """A lease of `incarnation` renewed at `renew_time` was stored: drop the renewal if
        the stored lease covers it (a newer one noted meanwhile stays)."""
        renewal = self._newest.get(pnode)
        if renewal is not None and renewal.incarnation == incarnation and renewal.at <= renew_time:
            del self._newest[pnode]

    def __len__(self) -> int:
        return len(self._newest)
