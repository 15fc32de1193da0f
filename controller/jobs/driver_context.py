"""What every training run and inference on one orchestrator replica shares: the store,
the view, the inbox, the clients to agents, trust and metrics sinks."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Iterable

from api.resources import job as job_model
from api.resources import network as net_model
from controller import metrics as metrics_mod
from controller.jobs import driver_inbox, job_watch, vnode_client
from controller.runtime import clock as clock_mod
from controller.state import view as view_mod
from controller.trust import book as trust
from controller.trust import tiebreak
from store import base, errors


@dataclasses.dataclass(frozen=True, slots=True)
class DriverConfig:
    #: The blob store VNodes checkpoint under ("file:///dir/" or "s3://bucket/prefix/").
    blob_store: str = ""
    #: Where agents reach this replica's driver inbox (reply_to); empty until known.
    advertise: str = ""
    step_timeout: float = 10.0
    progress_every: float = 0.5
    rpc_timeout: float = 5.0
    #: The job loop looks at each running job this often (a dead driver is restarted).
    job_recheck: float = 2.0
    #: Paused runs re-check readiness, and the Job for a cancel, at least this often.
    ready_recheck: float = 1.0
    #: Backoff between rolled-back attempts: from the first, doubling up to the second, so
    #: a network that keeps failing is not restored in a tight loop.
    attempt_backoff: float = 0.1
    attempt_backoff_max: float = 5.0
    max_message_bytes: int = driver_inbox.DEFAULT_MAX_MESSAGE_BYTES


class DriverContext:
    """What every run and inference on this replica shares."""

    def __init__(
        self,
        *,
        store: base.Store,
        view: view_mod.View,
        clock: clock_mod.Clock,
        config: DriverConfig,
        replica_id: str,
        transport: vnode_client.Transport,
    ) -> None:
        self.store = store
        self.view = view
        self.clock = clock
        self.config = config
        self.replica_id = replica_id
        self.inbox = driver_inbox.Inbox()
        self.feed = job_watch.JobFeed()
        self.client = vnode_client.VNodeClient(
            view=view, clock=clock, transport=transport, rpc_timeout=config.rpc_timeout
        )
        self.reply_to = config.advertise
        self._book: trust.TrustBook | None = None
        self._metrics: metrics_mod.Metrics | None = None
        self._address_known = asyncio.Event()
        if self.reply_to:
            self._address_known.set()

    @property
    def book(self) -> trust.TrustBook | None:
        """Where results' outcomes go (set by the server; None: trust is not tracked)."""
        return self._book

    @book.setter
    def book(self, book: trust.TrustBook | None) -> None:
        self._book = self.inbox.book = book

    @property
    def metrics(self) -> metrics_mod.Metrics | None:
        """Where disagreements, tiebreaks and inference results are counted (set by the
        server; None: not counted)."""
        return self._metrics

    @metrics.setter
    def metrics(self, sink: metrics_mod.Metrics | None) -> None:
        self._metrics = sink
        self.inbox.on_disagreed = sink.disagreed if sink is not None else None

    def suspect(self, pnode_name: str) -> bool:
        """The PNode is Bugged, or its strikes this replica holds unwritten make it so: no
        work goes to it (`trust.TrustBook.suspect`)."""
        node = self.view.pnodes.get(pnode_name)
        if node is None:
            return False
        if self._book is None:
            return node.status.trust.bugged
        return self._book.suspect(pnode_name, node.status.trust)

    def suspect_pnodes(self, slots: Iterable[str]) -> list[str]:
        """The PNodes holding `slots` that are `suspect`, sorted."""
        held = {a.spec.pnode for s in slots if (a := self.view.allocations.get(s)) is not None}
        return sorted(p for p in held if self.suspect(p))

    def struck(self, pnode_name: str) -> bool:
        """The PNode has a strike in its window, written or not."""
        node = self.view.pnodes.get(pnode_name)
        if node is None:
            return False
        if self._book is None:
            return node.status.trust.strikes > 0
        return self._book.strikes(pnode_name, node.status.trust) > 0

    async def request_tiebreaker(self, network: str, vnode: str) -> None:
        """Ask for one more replica of `vnode` and show it to this replica's view at once,
        so the next plan (and the network loop, woken by the view) sees it."""
        added = await tiebreak.request(
            self.store, network, vnode, on_written=self.view.apply_written
        )
        if not added:  # someone else wrote it (or the view is behind): read what is there
            await self.sync_network(network)
        elif self._metrics is not None:
            self._metrics.tiebroken()

    async def clear_tiebreakers(self, network: str) -> list[str]:
        """Remove the network's tiebreakers and show it to this replica's view at once."""
        removed = await tiebreak.clear(self.store, network, on_written=self.view.apply_written)
        if not removed:
            await self.sync_network(network)
        return removed

    async def sync_network(self, network: str) -> None:
        try:
            fresh = await self.store.get(net_model.Network, network)
        except errors.NotFound:
            return
        self.view.apply_written([fresh])

    def set_reply_to(self, address: str) -> None:
        """Once the port is bound (it may be chosen by the OS), tell runs where to listen."""
        self.reply_to = address
        self._address_known.set()

    async def wait_reply_to(self) -> str:
        await self._address_known.wait()
        return self.reply_to

    def written(self, job: job_model.Job) -> None:
        """Every Job write on this replica goes here, so watchers see it at once."""
        self.feed.published(job)

    async def close(self) -> None:
        await self.client.close()
