"""Replica membership and the division of reconcile work among orchestrator replicas.

Each replica keeps an `Orchestrator` record renewed every lease/3. The live replicas are
those renewed within the lease; a key belongs to the live replica with the highest
rendezvous hash of (replica, key), so when a replica joins or dies only its share of keys
moves (1/n of them), and every replica computes the same division from the same records
without talking to the others. A dead replica's share is picked up within its lease.

The division is only an optimization: two replicas reconciling one key (while their views
of membership differ) is harmless, because every write is conditional. So a replica that
cannot read membership takes every key rather than none.

A replica's lease, like a PNode's, does not run through the time this replica could not
observe the store (`unobserved`, the rule `api.resources.lease.held_through`): after a
store stall the replicas that renewed on time are still members, instead of every replica
briefly taking every key.

Membership compares renewal times written by different machines: clock skew between
replicas shortens or lengthens a lease by the skew; keep clocks in sync (NTP) and the lease
well above it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import re
import secrets
import socket
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta

from api.resources import lease as lease_model
from api.resources import meta, orchestrator
from controller import config
from controller.runtime import clock as clock_mod
from store import base, errors

log = logging.getLogger("dcnr.replicas")

#: Expired records of dead replicas are deleted after this many leases.
FORGET_AFTER_LEASES = 10


def default_replica_id() -> str:
    """host-pid-random, made a DNS-1123 subdomain."""
    host = re.sub(r"[^a-z0-9-]+", "-", socket.gethostname().lower()).strip("-")[:40] or "host"
    return f"{host}-{os.getpid()}-{secrets.token_hex(2)}"


def rendezvous_owner(key: str, members: list[str]) -> str | None:
    """The member that owns `key`: highest hash of member/key (ties by name)."""
    best: tuple[bytes, str] | None = None
    for member in members:
        score = hashlib.blake2b(f"{member}/{key}".encode(), digest_size=8).digest()
        if best is None or (score, member) > best:
            best = (score, member)
    return None if best is None else best[1]


class Replicas:
    def __init__(
        self,
        store: base.Store,
        clock: clock_mod.Clock,
        *,
        replica_id: str,
        address: str,
        lease_seconds: float,
        on_membership_change: Callable[[list[str]], None] | None = None,
        unobserved: Callable[[], Iterable[lease_model.Unobserved]] | None = None,
        stall_max: float = 0.0,
    ) -> None:
        """`unobserved()`: the periods this replica could not observe the store; at most
        `stall_max` seconds of them hold another replica's lease open."""
        self.replica_id = replica_id
        self._store = store
        self._clock = clock
        self._address = address
        self._lease = lease_seconds
        self._on_change = on_membership_change
        self._unobserved = unobserved
        self._stall_max = stall_max
        self._record: orchestrator.Orchestrator | None = None
        self.members: list[str] = []
        self._known = False
        self._task: asyncio.Task[None] | None = None

    def owns(self, key: str) -> bool:
        if not self._known or self.replica_id not in self.members:
            return True  # membership unknown: take everything; conditional writes keep it safe
        return rendezvous_owner(key, self.members) == self.replica_id

    async def start(self) -> None:
        await self.renew()
        self._task = asyncio.create_task(self._run(), name="replica-lease")

    async def stop(self) -> None:
        """Stop renewing and release the lease, so the others take over at once."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._record is not None:
            with contextlib.suppress(errors.StoreError):
                await self._store.delete(
                    orchestrator.Orchestrator, self.replica_id, uid=self._record.metadata.uid
                )
            self._record = None

    async def _run(self) -> None:
        while True:
            await self._clock.sleep(self._lease / 3)
            try:
                await self.renew()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("replica lease renewal failed")

    async def renew(self) -> None:
        now = self._clock.now()
        record = self._record
        try:
            if record is None:
                record = await self._store.create(self._new_record(now))
            else:
                record = record.model_copy(deep=True)
                record.status.renewed_at = now
                record = await self._store.update(record)
        except (errors.Conflict, errors.NotFound, errors.AlreadyExists):
            record = await self._recover(now)
        self._record = record
        await self._refresh_members(now)

    def _new_record(self, now: datetime) -> orchestrator.Orchestrator:
        return orchestrator.Orchestrator(
            metadata=meta.ObjectMeta(name=self.replica_id),
            spec=orchestrator.OrchestratorSpec(
                address=self._address, lease_duration_seconds=self._lease
            ),
            status=orchestrator.OrchestratorStatus(renewed_at=now, version=config.SERVER_VERSION),
        )

    async def _recover(self, now: datetime) -> orchestrator.Orchestrator:
        """Someone else touched our record (or it was garbage-collected): take it back."""
        try:
            current = await self._store.get(orchestrator.Orchestrator, self.replica_id)
        except errors.NotFound:
            return await self._store.create(self._new_record(now))
        current.status.renewed_at = now
        return await self._store.update(current)

    async def _refresh_members(self, now: datetime) -> None:
        records = await base.list_all(self._store, orchestrator.Orchestrator)
        # Read after the listing: a stall it sat through is counted.
        unobserved = list(self._unobserved()) if self._unobserved is not None else []
        live, dead = [], []
        for record in records:
            renewed = record.status.renewed_at
            lease = timedelta(seconds=record.spec.lease_duration_seconds)
            held = (
                None
                if renewed is None
                else lease_model.held_through(
                    renewed + lease, since=renewed, unobserved=unobserved, most=self._stall_max
                )
            )
            if held is not None and held > now:
                live.append(record.name)
            elif renewed is None or renewed + lease * FORGET_AFTER_LEASES < now:
                dead.append(record)
        for record in dead:
            with contextlib.suppress(errors.StoreError):
                await self._store.delete(
                    orchestrator.Orchestrator,
                    record.name,
                    resource_version=record.metadata.resource_version,
                    uid=record.metadata.uid,
                )
        live.sort()
        changed = live != self.members or not self._known
        self.members, self._known = live, True
        if changed:
            log.info("replica membership", extra={"fields": {"members": live}})
            if self._on_change is not None:
                self._on_change(live)
