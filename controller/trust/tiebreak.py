"""Tiebreakers: a VNode whose replicas disagreed with no majority runs one more replica.

The request is durable state on the Network (`status.tiebreakers`), not a message: the
network loop reads it (`Network.replicas_of`) and places the extra replica like any other
slot, and a driver that restarts still sees it. Whoever sees the dispute writes it (the
driver, ValidationService); the driver clears it after a checkpoint with no disagreement.

Writes are read-modify-write conditioned on the resource_version read, re-read on
Conflict (`store.retry`): the network loop writes the same status concurrently, and neither
may lose the other's change (the loop carries `tiebreakers` over from the copy it read, so
its stale write conflicts instead of wiping a request).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from api.resources import network as network_model
from store import base, errors, retry

log = logging.getLogger("dcnr.tiebreak")

#: Told of the record written (e.g. `View.apply_written`), so that this replica's network
#: loop reconciles at once instead of at the view's next refresh.
Written = Callable[[list[network_model.Network]], None]


async def request(
    store: base.Store, network: str, vnode: str, *, on_written: Written | None = None
) -> bool:
    """Add `vnode` to the network's tiebreakers. True if this call added it; False when it
    was already there, or the network or the VNode does not exist."""

    def add(net: network_model.Network) -> list[str] | None:
        if net.vnode(vnode) is None or vnode in net.status.tiebreakers:
            return None
        return sorted({*net.status.tiebreakers, vnode})

    if await _update(store, network, add, on_written) is None:
        return False
    log.info("tiebreaker requested", extra={"fields": {"network": network, "vnode": vnode}})
    return True


async def clear(store: base.Store, network: str, *, on_written: Written | None = None) -> list[str]:
    """Remove every tiebreaker of the network; returns those this call removed (empty when
    there were none or the network does not exist)."""
    before = await _update(
        store, network, lambda net: [] if net.status.tiebreakers else None, on_written
    )
    if not before:
        return []
    log.info("tiebreakers cleared", extra={"fields": {"network": network, "vnodes": before}})
    return before


async def _update(
    store: base.Store,
    network: str,
    change: Callable[[network_model.Network], list[str] | None],
    on_written: Written | None,
) -> list[str] | None:
    """Set the network's tiebreakers to `change(net)` (None: nothing to do) and bump the
    generation, re-reading on Conflict; returns the tiebreakers before the write, or None
    when nothing was written (no change, or no such network)."""

    async def attempt() -> list[str] | None:
        try:
            net = await store.get(network_model.Network, network)
        except errors.NotFound:
            return None
        tiebreakers = change(net)
        if tiebreakers is None:
            return None
        updated = net.model_copy(deep=True)
        updated.status.tiebreakers = tiebreakers
        updated.status.tiebreak_generation += 1
        try:
            written = await store.update(updated)
        except errors.NotFound:
            return None
        if on_written is not None:
            on_written([written])
        return list(net.status.tiebreakers)

    return await retry.retry_on_conflict(
        attempt, what=f"write the tiebreakers of network {network!r}"
    )
