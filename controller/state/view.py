"""The in-memory view: what the hot paths (heartbeat, resolution) read instead of the store.

Heartbeats and resolutions must not cost a store read each (DESIGN: thousands per second
against a store that does hundreds). The view puts together, each in its own module:

- the record cache with its indexes (`controller.state.cache`): PNodes, their leases,
  allocations and networks, never moved backwards;
- liveness (`controller.state.liveness`): lease expiry, is_live, live endpoints, judged at
  the moment of the question from the cached lease and the unpersisted renewals
  (`controller.state.renewals`, the one store the lease keeper also reads and clears);
- change notification (`controller.state.changes`): per-PNode and per-network signals
  (`controller.runtime.signal`, timing out on the view's clock) and subscribers;
- assignment sets, what an agent is shown (here).

This module keeps the cache fresh three ways:

- write-through: this replica's own writes are applied the moment they succeed
  (`apply_written`), so an assignment it placed reaches its agent at once;
- the store's change feed (an informer per kind, Kubernetes' list-then-watch): one full
  read (`refresh`) after taking a cursor, then every `view_refresh` seconds the changes
  written since (`follow`), each applied only when newer than what the cache holds (and
  one it holds already, such as its own write, skipped before its record is parsed); a
  cursor the feed no longer serves (`errors.Gone`) is answered as a resync reads;
- resync (`resync`): every `view_resync` seconds anyway, the level-triggered safety net
  under the feed (a record the feed somehow missed is set right within it), at the cost of
  what changed: after following the feed it lists every record's uid and resource_version
  (`Store.versions`), reads the records the cache lacks or holds older, and forgets those
  the store no longer has, the same outcome as a full read without parsing every record
  (`_reread`).

Neither path keeps a PNode and its allocations in step: a PNode written through (or
re-read) may already count another replica's placement whose allocation the next refresh
brings, and a refresh may read allocations newer than the PNode read before them. So an
assignment set is shown only when the allocations held match the PNode's digest of them
(`assignment_set`): an agent is never told a version whose set it was not shown.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Iterable, Sequence
from datetime import datetime

from api.resources import allocation, lease, meta, pnode
from api.resources import network as net_model
from controller import config as config_mod
from controller.runtime import background
from controller.runtime import clock as clock_mod
from controller.runtime import signal as signal_mod
from controller.state import cache as cache_mod
from controller.state import changes as changes_mod
from controller.state import liveness as liveness_mod
from controller.state import renewals as renewals_mod
from store import base, errors

log = logging.getLogger("dcnr.view")

#: Where these live now; the names stay importable from here for the hot paths' callers.
Signal = signal_mod.Signal
Endpoint = liveness_mod.Endpoint

#: Changes applied (or listed versions compared) between two yields to the event loop. A
#: feed page is up to 500 records and each costs tens of microseconds to apply (the cache's
#: indexes, the change events), so a page in one piece held the loop, and every Heartbeat
#: and Resolve waiting on it, for milliseconds on end (issue 13, the `ingest` scenario).
CHUNK = 64
ChangeCallback = cache_mod.ChangeCallback


@dataclasses.dataclass(frozen=True, slots=True)
class Assignment:
    allocation: allocation.Allocation
    network: net_model.Network
    vnode: net_model.VNodeSpec


@dataclasses.dataclass(frozen=True, slots=True)
class AssignmentSet:
    version: int
    assignments: tuple[Assignment, ...]
    #: False while this view holds another set of the PNode's allocations than its version
    #: stands for (see `View.assignment_set`): then version is 0 and nothing is shown.
    settled: bool = True


#: What a view shows while it has not caught up with a PNode's set: nothing, at version 0,
#: which no agent takes (it keeps what it runs) and no heartbeat answer carries.
UNSETTLED = AssignmentSet(0, (), settled=False)


#: A resync that finds more than this many of a kind's records stale, and more than a
#: quarter of them, lists the kind in full rather than reading them one at a time.
RESYNC_GETS_MIN = 64


#: The share of an assignment set's version left to the hosted networks' tiebreak generations.
GENERATION_SPAN = 1 << 20


def set_version(node: pnode.PNode, entries: Iterable[Assignment]) -> int:
    """The version an agent is told: it must grow whenever what the agent is shown changes.

    The PNode's own `assignments_version` is bumped with each of its allocations' writes;
    but an assignment also carries its neighbours' replica counts, which change when a
    tiebreaker replica joins or leaves another PNode, with no write to this one. So the
    version is `assignments_version * GENERATION_SPAN + the sum of the hosted networks'
    tiebreak_generation` (capped below the span). It only grows: with `assignments_version`
    unchanged the hosted networks are the same (hosting one more or one fewer is an
    allocation write, which bumps it) and each generation only grows; and a bump of
    `assignments_version` outweighs any drop of the sum."""
    networks = {a.network.name: a.network.status.tiebreak_generation for a in entries}
    generations = min(sum(networks.values()), GENERATION_SPAN - 1)
    return node.status.assignments_version * GENERATION_SPAN + generations


class View:
    def __init__(
        self,
        store: base.Store,
        clock: clock_mod.Clock,
        *,
        config: config_mod.ControlPlaneConfig,
        unobserved: liveness_mod.Unobserved | None = None,
    ) -> None:
        """`unobserved()`: the periods this replica could not observe the store
        (`controller.state.store_watch`), which leases do not run through."""
        self._store = store
        self._clock = clock
        self._config = config
        self.cache = cache_mod.Cache(on_change=self._published)
        self.renewals = renewals_mod.Renewals()
        self.liveness = liveness_mod.Liveness(
            self.cache,
            self.renewals,
            lease_duration=config.lease_duration,
            unobserved=unobserved,
            stall_max=config.store_stall_max,
        )
        self.changes = changes_mod.Changes(self.cache, clock)
        #: Bumped on any change at all (watchers of everything, tests).
        self.changed = self.changes.changed
        #: (kind, name) → monotonic time of this replica's last write or delete of it.
        self._local: dict[tuple[str, str], float] = {}
        #: When the view last caught up with the store (a full read or the feed).
        self.refreshed_at: datetime | None = None
        #: Where the feed goes on from; None until the first full read.
        self._cursor: str | None = None
        self._resynced_at = float("-inf")
        #: Counters for /metrics: full reads (initial, after Gone), feed changes, resyncs and
        #: the records they read.
        self.full_reads = 0
        self.relists_after_gone = 0
        self.feed_changes = 0
        #: Feed changes of records the cache held at that version or newer (mostly this
        #: replica's own writes, applied through): skipped without parsing their JSON.
        self.feed_held = 0
        self.resyncs = 0
        self.resync_reads = 0
        self._background = background.Background("view-refresh")

    def _published(self, old: meta.Resource | None, new: meta.Resource | None) -> None:
        self.changes.publish(old, new)

    def subscribe(self, callback: ChangeCallback) -> None:
        """Call `callback(old, new)` on every change of a record (None: absent), from any
        path. Events only produce keys: the server maps them to loop keys."""
        self.changes.subscribe(callback)

    # -- the cache's tables -----------------------------------------------------------------

    @property
    def pnodes(self) -> dict[str, pnode.PNode]:
        return self.cache.pnodes

    @property
    def leases(self) -> dict[str, lease.PNodeLease]:
        return self.cache.leases

    @property
    def allocations(self) -> dict[str, allocation.Allocation]:
        return self.cache.allocations

    @property
    def networks(self) -> dict[str, net_model.Network]:
        return self.cache.networks

    # -- keeping fresh ----------------------------------------------------------------------

    async def refresh(self) -> None:
        """Re-read everything from the store; records deleted elsewhere disappear. The feed
        goes on from a cursor taken just before the reads, so nothing written during them
        is missed (what they already saw comes again, and is not newer).

        A record this replica wrote or deleted after the re-read began is left as written:
        the re-read may predate it, and must not undo it until the next one.
        """
        started = self._clock.monotonic()
        cursor = await self._store.feed_head(cache_mod.KINDS)
        pnodes = await base.list_all(self._store, pnode.PNode)
        leases = await base.list_all(self._store, lease.PNodeLease)
        allocations = await base.list_all(self._store, allocation.Allocation)
        networks = await base.list_all(self._store, net_model.Network)
        for kind, fresh in (
            (pnode.PNode, pnodes),
            (lease.PNodeLease, leases),
            (allocation.Allocation, allocations),
            (net_model.Network, networks),
        ):
            self._replace(kind, fresh, started)
        self._local = {key: at for key, at in self._local.items() if at >= started}
        self.refreshed_at = self._clock.now()
        self._cursor = cursor
        self._resynced_at = started
        self.full_reads += 1

    async def follow(self) -> None:
        """Apply what the change feed holds since the last call (or full read); a cursor
        the feed no longer serves is answered by a re-read (`_reread`)."""
        await self._follow()

    async def _follow(self) -> bool:
        """`follow`; whether it read the store instead (no cursor yet, or Gone)."""
        if self._cursor is None:
            await self.refresh()
            return True
        while True:
            try:
                page = await self._store.changes(self._cursor, held=self.cache.holds)
            except errors.Gone as exc:
                log.warning("view: %s; reading the store again", exc)
                self.relists_after_gone += 1
                await self._reread()
                return True
            for start in range(0, len(page.changes), CHUNK):
                if start:
                    await asyncio.sleep(0)  # let the hot paths in between chunks
                for change in page.changes[start : start + CHUNK]:
                    self._apply_change(change)
            self.feed_changes += len(page.changes)
            self._cursor = page.cursor
            if not page.more:
                break
        self.refreshed_at = self._clock.now()
        return False

    def _apply_change(self, change: base.Change) -> None:
        if not change.deleted:
            # What `Cache.put` would leave as it is, judged from the feed's own columns
            # (issue 13): this replica's own writes, applied when written, all come back
            # through the feed, and parsing them again bought nothing. Asked again here, on
            # the loop: the store's answer (`held`) is from before the page, and what the
            # cache holds may have moved since (`test_a_tombstone_of_an_earlier_life_...`).
            if self.cache.holds(change.kind, change.name, change.uid, change.resource_version):
                self.feed_held += 1
                return
            record = change.record
            assert record is not None
            self.cache.put(record)  # newer, or another uid's record
            return
        table = self.cache.table(cache_mod.KIND_BY_NAME[change.kind])
        held = None if table is None else table.get(change.name)
        if (
            held is not None
            and held.metadata.uid == change.uid
            and held.metadata.resource_version <= change.resource_version
        ):
            self.cache.forget(held)

    async def resync(self) -> None:
        """The level-triggered net under the feed: the feed is followed first, so what the
        re-read (`_reread`) then reads is what the feed missed (and what was written during
        its listing), not what the feed would have brought next."""
        if await self._follow():
            return  # no cursor yet, or the feed answered Gone: the store was just read
        await self._reread()
        self.resyncs += 1

    async def _reread(self) -> None:
        """What `refresh` does, reading only what changed: per kind, the uid and
        resource_version of every record (`Store.versions`), then a consistent get of each
        record the cache lacks, holds at an older version or of another uid; a name the
        store no longer has is forgotten. A record held at a newer version than listed (a
        write the listing predates) is left, as `Cache.put` would leave it; one that
        changed between the listing and its get comes at the newer version; one deleted
        meanwhile is forgotten. This replica's own writes after the re-read began are left
        as written, and the feed goes on from a cursor taken before it, as after `refresh`.

        The resync's, and the answer to Gone once the cache is filled: a replica that fell
        behind the feed by more than it keeps (a large placement of its own between two
        follows, a long stall) holds most records already, often its own writes, and a full
        read parsed every one of them again (211 s at 100,000 PNodes and 1,000,000 VNodes,
        issue 13's full-size run).
        """
        started = self._clock.monotonic()
        cursor = await self._store.feed_head(cache_mod.KINDS)
        for kind in cache_mod.KINDS:
            await self._resync_kind(kind, started)
        self._local = {key: at for key, at in self._local.items() if at >= started}
        self.refreshed_at = self._clock.now()
        self._cursor = cursor
        self._resynced_at = started

    async def _resync_kind(self, kind: type[meta.Resource], started: float) -> None:
        table = self.cache.table(kind)
        assert table is not None
        listed = await base.all_versions(self._store, kind)
        stale = []
        for count, (name, version) in enumerate(listed.items(), start=1):
            if _behind(table.get(name), version):
                stale.append(name)
            if count % (CHUNK * 4) == 0:
                await asyncio.sleep(0)  # thousands of names: let the hot paths in
        if len(stale) > max(RESYNC_GETS_MIN, len(listed) // 4):
            fresh = await base.list_all(self._store, kind)  # cheaper than a get each
            self.resync_reads += len(fresh)
            self._replace(kind, fresh, started)
            return
        self._forget_missing(kind, set(listed), started)
        for name in stale:
            try:
                record = await self._store.get(kind, name)
            except errors.NotFound:  # deleted since the listing
                self._forget_missing(kind, set(), started, names=[name])
                continue
            self.resync_reads += 1
            if self._local.get((kind.KIND, name), -1.0) < started:
                self.cache.put(record)

    async def catch_up(self) -> None:
        """One step of `run`: the first full read (none yet), a resync when due
        (`view_resync` since the last), else the feed."""
        if self._cursor is None:
            await self.refresh()
        elif self._clock.monotonic() - self._resynced_at >= self._config.view_resync:
            await self.resync()
        else:
            await self.follow()

    def _replace(
        self, kind: type[meta.Resource], fresh: Sequence[meta.Resource], started: float
    ) -> None:
        self._forget_missing(kind, {record.name for record in fresh}, started)
        for record in fresh:
            if self._local.get((kind.KIND, record.name), -1.0) < started:
                self.cache.put(record)

    def _forget_missing(
        self,
        kind: type[meta.Resource],
        present: set[str],
        started: float,
        *,
        names: Iterable[str] | None = None,
    ) -> None:
        """Forget the held records of `names` (default: all held) not in `present`, unless
        this replica wrote or deleted them after `started`."""
        table = self.cache.table(kind)
        assert table is not None
        held = list(table) if names is None else [n for n in names if n in table]
        for name in [n for n in held if n not in present]:
            if self._local.get((kind.KIND, name), -1.0) < started:
                self.cache.forget(table[name])

    async def run(self) -> None:
        """Catch up every `view_refresh` seconds until cancelled; failures are logged."""
        while True:
            try:
                await self.catch_up()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("view refresh failed; serving the last good view")
            await self._clock.sleep(self._config.view_refresh)

    def start(self) -> None:
        self._background.start(self.run)

    async def stop(self) -> None:
        await self._background.stop()

    def apply_written(self, records: Iterable[meta.Resource | None]) -> None:
        """Write-through of records this replica has just written (None entries skipped)."""
        for record in records:
            if record is not None:
                self._local[(record.KIND, record.name)] = self._clock.monotonic()
                self.cache.put(record)

    def apply_deleted(self, kind: type[meta.Resource], name: str) -> None:
        table = self.cache.table(kind)
        self._local[(kind.KIND, name)] = self._clock.monotonic()
        if table is not None and name in table:
            self.cache.forget(table[name])

    def pnode_and_lease(self, name: str) -> tuple[pnode.PNode, lease.PNodeLease | None] | None:
        """The cached PNode and its lease (None: no lease); None if the PNode is not cached.
        The lifecycle loop's resync reads these instead of the store while they show nothing
        to write (`reconcilers.pnode`, its `cached`)."""
        node = self.cache.pnodes.get(name)
        return None if node is None else (node, self.cache.leases.get(name))

    # -- liveness ---------------------------------------------------------------------------

    def lease_expiry(self, name: str) -> datetime | None:
        """When the PNode's lease of its current incarnation expires; None if it has none."""
        return self.liveness.lease_expiry(name)

    def is_live(self, name: str, now: datetime) -> bool:
        return self.liveness.is_live(name, now)

    def endpoints(self, network_name: str, vnode: str, now: datetime) -> list[Endpoint]:
        """Live endpoints of a VNode: current allocations on PNodes whose lease holds now."""
        return self.liveness.endpoints(network_name, vnode, now)

    # -- queries ----------------------------------------------------------------------------

    def pnode_signal(self, name: str) -> Signal:
        return self.changes.pnode_signal(name)

    def network_signal(self, name: str) -> Signal:
        return self.changes.network_signal(name)

    def allocations_on(self, pnode_name: str) -> list[allocation.Allocation]:
        return self.cache.allocations_on(pnode_name)

    def allocations_of(self, network_name: str) -> list[allocation.Allocation]:
        return self.cache.allocations_of(network_name)

    def networks_on(self, pnode_name: str) -> set[str]:
        """Networks with an allocation on the PNode (event routing's lookup)."""
        return self.cache.networks_on(pnode_name)

    def hosts(self, pnode_name: str, network_name: str) -> bool:
        """Whether the PNode holds an allocation of the network, of any VNode and replica."""
        return self.cache.hosts(pnode_name, network_name)

    def network_keys(self) -> list[str]:
        """The network loop's keys at resync: every Network, and the network of every
        allocation whose Network is gone (an orphan, which the loop stops when it finds the
        record missing; until then its PNode's set is not shown, see `assignment_set`)."""
        orphaned = {a.spec.network for a in list(self.cache.allocations.values())}
        return sorted(set(self.cache.networks) | orphaned)

    def networks_not_ready(self) -> set[str]:
        """Networks not Ready: what a PNode that gained room may now let be placed."""
        return {n for n, net in self.cache.networks.items() if net.status.phase != "Ready"}

    def assignment_set(self, pnode_name: str) -> AssignmentSet | None:
        """The PNode's desired assignments: its allocations for its current incarnation.

        A version is published only together with the set it stands for. The PNode record
        and its allocations reach this view by different paths (another replica's placement
        arrives with a refresh; the PNode record it bumped may arrive first, with this
        replica's own write of it or a re-read), so the view shows the set only while the
        allocations it holds for the PNode have the digest the record carries
        (`pnode.PNodeStatus.assignments_digest`) and every network they belong to is here.
        Otherwise it is UNSETTLED: nothing new is shown, and once the view catches up the
        agent is told the version with the whole set (its own version never moved past it).
        """
        node = self.cache.pnodes.get(pnode_name)
        if node is None:
            return None
        held = self.cache.allocations_on(pnode_name)
        digest = node.status.assignments_digest
        if digest is not None and allocation.digest_of(held) != digest:
            return UNSETTLED
        entries = []
        for alloc in held:
            if alloc.spec.pnode_incarnation != node.status.incarnation:
                continue  # placed for an incarnation the agent has dropped; being re-issued
            net = self.cache.networks.get(alloc.spec.network)
            if net is None:
                if digest is None:
                    continue  # unchecked record: as before the digest, shown without it
                return UNSETTLED  # the network's record has not reached this view yet
            vnode = net.vnode(alloc.spec.vnode)
            if vnode is None:
                continue  # no longer in the spec: being stopped
            entries.append(Assignment(alloc, net, vnode))
        return AssignmentSet(set_version(node, entries), tuple(entries))


def _behind(held: meta.Resource | None, listed: base.Version) -> bool:
    """Whether the store's record (as `versions` listed it) is one the cache must read:
    absent from the cache, another life of the name, or newer."""
    return (
        held is None
        or held.metadata.uid != listed.uid
        or held.metadata.resource_version < listed.resource_version
    )
