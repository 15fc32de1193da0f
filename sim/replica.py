"""One orchestrator replica in the simulator: the real parts below the gRPC boundary.

A `Replica` holds what `controller.server.Orchestrator` wires for the control plane (the
view, the lease keeper, allocation status, replica membership, the PNode, resolution and
validation servicers, the trust book, the network and PNode loops), built the same way, on
the shared store. What it leaves out: the grpc.aio server and interceptors (calls arrive
in-process, see `Call`), the job loop and driver (the validation servicer gets an empty
driver inbox: no job runs here), the event recorder, metrics. The trust book is flushed at
the start of every dispatch, as the server's writes strikes within `strike_flush`.

The manager (`controller.runtime.manager`) is replaced by `Loops`, a single-threaded
dispatcher with the same contract: keys come only from the routing table
(`controller.runtime.events`) and from periodic resyncs, filtered by `owns`; a key is
reconciled once however often it was named; `requeue_after` becomes a timer on the
simulator's clock; an error or `requeue` retries after a backoff drawn from the seed. It
runs every queued key to completion between two simulated events, so no interleaving of
two replicas' reconciles *within* an event is explored: replicas interleave at event
granularity (each reconcile sees the store as the previous one left it).
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable, Sequence
from typing import Any, cast

from api import identity
from api.resources import allocation, meta
from controller import config as config_mod
from controller.jobs import driver_inbox
from controller.runtime import events, replicas, workqueue
from controller.services import pnode_service, resolution_service, validation_service
from controller.state import allocation_status, leases, view
from controller.trust import book as trust
from reconcilers import base as reconcilers_base
from reconcilers import network as network_loop
from reconcilers import pnode as pnode_loop
from sim import clock as sim_clock
from store import base, errors

LOOPS = ("network", "pnode")
#: Reconciles one dispatch may run before it stops and reports a storm (a loop that keeps
#: waking itself is a finding, not something to wait out).
MAX_PASSES = 5000


class Refused(Exception):
    """What `context.abort` raises for an in-process call: the gRPC status and message."""

    def __init__(self, code: Any, details: str) -> None:
        super().__init__(f"{code.name}: {details}")
        self.code = code
        self.details = details


class Call:
    """The slice of grpc.aio.ServicerContext the servicers use: call metadata (the bearer
    credential) and abort."""

    def __init__(self, credential: str | None = None) -> None:
        self._metadata = (("authorization", f"Bearer {credential}"),) if credential else ()

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return self._metadata

    def set_trailing_metadata(self, _metadata: Any) -> None:
        pass

    async def abort(self, code: Any, details: str) -> None:
        raise Refused(code, details)

    def context(self) -> Any:
        """Typed as the servicers expect it."""
        return cast(Any, self)


@dataclasses.dataclass(frozen=True, slots=True)
class Timer:
    """A reconcile asked for at a simulated time."""

    at: float
    replica: str
    loop: str
    key: str


class Replica:
    def __init__(
        self,
        replica_id: str,
        *,
        store: base.Store,
        clock: sim_clock.SimClock,
        config: config_mod.ControlPlaneConfig,
        authority: identity.Authority,
        verifier: identity.Verifier,
        identity_ttl: float,
        rng: random.Random,
        schedule: Callable[[Timer], None],
        trace: Callable[[str], None],
        placed: Callable[[allocation.Allocation], None] | None = None,
    ) -> None:
        """`placed`: told of every allocation the network loop writes (the simulator notes
        when each slot's epoch first appeared)."""
        self.id = replica_id
        self.store = store
        self.clock = clock
        self.config = config
        self.rng = rng
        self._schedule = schedule
        self._trace = trace
        self._placed = placed
        self.view = view.View(store, clock, config=config)
        self.leases = leases.LeaseKeeper(store, clock, view=self.view, config=config)
        self.statuses = allocation_status.AllocationStatus(store, self.view)
        self.membership = replicas.Replicas(
            store,
            clock,
            replica_id=replica_id,
            address=f"{replica_id}.sim:7070",
            lease_seconds=config.replica_lease,
        )
        self.pnodes = pnode_service.PNodeService(
            store=store,
            view=self.view,
            clock=clock,
            config=config,
            leases=self.leases,
            replica_id=replica_id,
            authority=authority,
            data_plane_plaintext=True,
            statuses=self.statuses,
            identity_ttl=identity_ttl,
        )
        self.trust = trust.TrustBook(store=store, clock=clock, on_written=self.view.apply_written)
        #: The evidence refusal reasons of the report being handled (`on_refused`).
        self.refusals: list[str] = []
        self.validation = validation_service.ValidationService(
            store=store,
            view=self.view,
            book=self.trust,
            inbox=driver_inbox.Inbox(clock=clock, book=self.trust),
            replica_id=replica_id,
            verifier=verifier,
            clock=clock,
            on_refused=self.refusals.append,
        )
        self.resolver = resolution_service.ResolutionService(
            view=self.view, clock=clock, replica_id=replica_id
        )
        pnode_changes = network_loop.ChangedPNodes()
        self.view.subscribe(pnode_changes.note)
        self.loops: dict[str, Any] = {
            "network": network_loop.NetworkReconciler(
                store,
                clock,
                config=config,
                on_written=self._network_wrote,
                on_deleted=self.view.apply_deleted,
                pnodes=lambda: self.view.pnodes,
                pnode_changes=pnode_changes,
                records=self.view,
            ),
            "pnode": pnode_loop.PNodeReconciler(
                store,
                clock,
                config=config,
                on_written=self.view.apply_written,
                on_deleted=self.view.apply_deleted,
                local_renewal=self.leases.renewed_at,
                cached=self.view.pnode_and_lease,
            ),
        }
        self.queued: dict[str, set[str]] = {loop: set() for loop in LOOPS}
        self.attempts: dict[tuple[str, str], int] = {}
        scale = config.lease_duration / config_mod.ControlPlaneConfig().lease_duration
        default = workqueue.DEFAULT_BACKOFF
        self.backoff = workqueue.Backoff(base=default.base * scale, cap=default.cap * scale)
        self.passes = 0
        self.errors = 0
        #: Which start of this replica id it is (the simulator's timers name it).
        self.incarnation = 0
        #: When the view last read the whole store (start, then every `view_refresh`).
        self.refreshed_at = 0.0
        self.view.subscribe(self._changed)

    async def start(self) -> None:
        """As the server starts: fill the view, join membership, queue every key."""
        await self.view.refresh()
        self.refreshed_at = self.clock.monotonic()
        await self.membership.renew()
        self.resync()

    def _network_wrote(self, written: Sequence[meta.Resource]) -> None:
        if self._placed is not None:
            for found in written:
                if isinstance(found, allocation.Allocation):
                    self._placed(found)
        self.view.apply_written(written)

    def _changed(self, old: meta.Resource | None, new: meta.Resource | None) -> None:
        lookup = events.Lookup(self.view.networks_on, self.view.networks_not_ready)
        for loop, key in events.keys_for_change(old, new, lookup):
            self.enqueue(loop, key)

    def enqueue(self, loop: str, key: str) -> None:
        if loop in self.queued and self.membership.owns(key):
            self.queued[loop].add(key)

    def resync(self) -> None:
        for key in sorted(self.view.networks):
            self.enqueue("network", key)
        for key in sorted(self.view.pnodes):
            self.enqueue("pnode", key)

    async def dispatch(self) -> int:
        """Reconcile every queued key, in name order, loop by loop, until none is queued.
        Returns the passes run; raises `Storm` past MAX_PASSES."""
        passes = 0
        if self.trust.pending():
            await self.trust.flush()
        if self.statuses.pending:
            await self.statuses.drain()
        while any(self.queued.values()):
            for loop in LOOPS:
                while self.queued[loop]:
                    key = min(self.queued[loop])
                    self.queued[loop].discard(key)
                    await self._reconcile(loop, key)
                    passes += 1
                    if passes > MAX_PASSES:
                        raise Storm(f"replica {self.id}: over {MAX_PASSES} reconciles in one step")
        self.passes += passes
        return passes

    async def _reconcile(self, loop: str, key: str) -> None:
        if not self.membership.owns(key):
            return
        try:
            result = await self.loops[loop].reconcile(key)
        except (errors.Conflict, errors.NotFound, errors.AlreadyExists) as exc:
            self._retry(loop, key, type(exc).__name__)
            return
        except reconcilers_base.TerminalError as exc:
            self.errors += 1
            self._trace(f"terminal {self.id} {loop}/{key}: {exc}")
            return
        if result.requeue:
            self._retry(loop, key, "requeue")
            return
        self.attempts.pop((loop, key), None)
        if result.requeue_after is not None:
            at = self.clock.monotonic() + max(result.requeue_after, 0.0)
            if result.requeue_after <= 0:
                self.queued[loop].add(key)
            else:
                self._schedule(Timer(at, self.id, loop, key))

    def _retry(self, loop: str, key: str, why: str) -> None:
        """The manager's per-key backoff (`controller.runtime.workqueue.Backoff`), scaled
        from the server's 4 s lease to the simulated one, its jitter drawn from the seed."""
        failures = self.attempts.get((loop, key), 0)
        self.attempts[(loop, key)] = failures + 1
        delay = self.backoff.delay(failures, self.rng)
        self._schedule(Timer(self.clock.monotonic() + delay, self.id, loop, key))

    async def persist(self) -> None:
        """The lease keeper's and membership's periodic work (every lease/6 and every
        replica lease/3 in the server; the simulator runs both every lease/6)."""
        await self.leases.flush()
        await self.membership.renew()

    async def refresh(self) -> None:
        """The view's periodic re-read of the store (every `view_refresh`)."""
        await self.view.refresh()
        self.refreshed_at = self.clock.monotonic()


class Storm(Exception):
    """A dispatch that would not end: reconciles keep queueing each other."""
