"""Tiebreaker replicas as runs ask for them: the store write (`controller.trust.tiebreak`)
shown to this replica's view at once, so the next plan (and the network loop, woken by the
view) sees it; when the write finds nothing to do, someone else wrote it or the view is
behind, so the network is read from the store instead."""

from __future__ import annotations

from api.resources import network as net_model
from controller import metrics as metrics_mod
from controller.state import view as view_mod
from controller.trust import tiebreak
from store import base, errors


class Tiebreakers:
    def __init__(
        self,
        *,
        store: base.Store,
        view: view_mod.View,
        metrics: metrics_mod.Metrics | None,
    ) -> None:
        self._store = store
        self._view = view
        #: Counts the tiebreakers requested (None: not counted).
        self._metrics = metrics

    async def request(self, network: str, vnode: str) -> None:
        """Ask for one more replica of `vnode`."""
        added = await tiebreak.request(
            self._store, network, vnode, on_written=self._view.apply_written
        )
        if not added:
            await self._sync(network)
        elif self._metrics is not None:
            self._metrics.tiebroken()

    async def clear(self, network: str) -> list[str]:
        """Remove the network's tiebreakers; returns the VNodes whose tiebreaker went."""
        removed = await tiebreak.clear(self._store, network, on_written=self._view.apply_written)
        if not removed:
            await self._sync(network)
        return removed

    async def _sync(self, network: str) -> None:
        try:
            fresh = await self._store.get(net_model.Network, network)
        except errors.NotFound:
            return
        self._view.apply_written([fresh])
