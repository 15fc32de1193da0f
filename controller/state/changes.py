"""Change notification: the signals hot paths wait on and the subscribers the server wires.

Two audiences, told of every record change the cache lets through:

- waiters (a PNode's WatchAssignments, a network's resolution watches and drivers) block on
  a per-PNode or per-network `Signal`: a change bumps every signal whose answers it may
  alter, and the waiter re-reads. A PNode change concerns the networks placed on it, a
  network change the PNodes hosting it (their assignments carry the network), a lease
  change the networks on its PNode (their endpoints' liveness);
- subscribers get `(old, new)`; the server maps these to loop keys
  (`controller.runtime.events`). A subscriber that raises is logged and the others still run.
"""

from __future__ import annotations

import logging

from api.resources import allocation, lease, meta, pnode
from api.resources import network as net_model
from controller.runtime import clock as clock_mod
from controller.runtime import signal as signal_mod
from controller.state import cache as cache_mod

log = logging.getLogger("dcnr.view")


class Changes:
    def __init__(self, cache: cache_mod.Cache, clock: clock_mod.Clock) -> None:
        self._cache = cache
        self._clock = clock
        self._pnode_signals: dict[str, signal_mod.Signal] = {}
        self._network_signals: dict[str, signal_mod.Signal] = {}
        #: Bumped on any change at all (watchers of everything, tests).
        self.changed = signal_mod.Signal(clock)
        self._subscribers: list[cache_mod.ChangeCallback] = []

    def subscribe(self, callback: cache_mod.ChangeCallback) -> None:
        self._subscribers.append(callback)

    def pnode_signal(self, name: str) -> signal_mod.Signal:
        return self._signal(self._pnode_signals, name)

    def network_signal(self, name: str) -> signal_mod.Signal:
        return self._signal(self._network_signals, name)

    def _signal(self, signals: dict[str, signal_mod.Signal], name: str) -> signal_mod.Signal:
        found = signals.get(name)
        if found is None:
            found = signals[name] = signal_mod.Signal(self._clock)
        return found

    def publish(self, old: meta.Resource | None, new: meta.Resource | None) -> None:
        """Tell everyone of a change the cache has applied (None: absent)."""
        either = new if new is not None else old
        pnodes: set[str] = set()
        networks: set[str] = set()
        if isinstance(either, allocation.Allocation):
            for rec in (old, new):
                if isinstance(rec, allocation.Allocation):
                    networks.add(rec.spec.network)
                    pnodes.add(rec.spec.pnode)
        elif isinstance(either, pnode.PNode):
            pnodes.add(either.name)
            networks |= self._cache.networks_on(either.name)
        elif isinstance(either, lease.PNodeLease):
            networks |= self._cache.networks_on(either.name)
        elif isinstance(either, net_model.Network):
            networks.add(either.name)
            pnodes |= self._cache.pnodes_of(either.name)
        for name in sorted(networks):
            self.network_signal(name).bump()
        for name in sorted(pnodes):
            self.pnode_signal(name).bump()
        self.changed.bump()
        for callback in self._subscribers:
            try:
                callback(old, new)
            except Exception:
                log.exception("view subscriber failed")
