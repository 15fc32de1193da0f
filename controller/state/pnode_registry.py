"""The PNode registry's writes: Register, Deregister and the admin changes, each one
conditional store write (or transaction) followed by write-through into the view.

Kept apart from the gRPC service so that the service is only the protocol (authentication,
fencing, messages) and this is only state (what a registration or a drain changes).

Writes retry on Conflict (`store.retry`): placements update a PNode's record (its
accounting) all the time, and an agent's Register or an operator's Cordon should not fail
because a placement landed between read and write. Each retry re-reads and re-checks
everything.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime

from api.resources import allocation, lease, meta, pnode
from controller import config as config_mod
from controller import errors as faults
from controller.runtime import clock as clock_mod
from controller.state import credentials
from controller.state import view as view_mod
from reconcilers import pnode as lifecycle
from store import base, errors, retry

log = logging.getLogger("dcnr.pnode_registry")

AGENT_VERSION_ANNOTATION = "dcnr.io/agent-version"
CORDONED = "Cordoned"
DRAINING = "Draining"

Change = Callable[[pnode.PNode, datetime], None]


def _bump_generation(old: pnode.PNode, new: pnode.PNode) -> None:
    if new.spec != old.spec:
        new.metadata.generation = old.metadata.generation + 1


#: The answer to a missing or wrong credential, and to a PNode name that does not exist: one
#: text, naming nothing, so that no answer tells whether a name exists (docs/security.md).
UNAUTHENTICATED_MESSAGE = (
    "pnode_id: missing or invalid credential for this PNode; send the credential Register "
    "returned as 'authorization: Bearer <credential>' metadata"
)


def proven_credential(node: pnode.PNode, presented: str | None) -> str | None:
    """The hash `presented` matches for a re-registration of `node`: its current credential,
    or the one proven at its last registration (whose reply may have been lost); None when
    it matches neither."""
    for hashed in (node.spec.credential_hash, node.spec.previous_credential_hash):
        if hashed and credentials.matches(presented, hashed):
            return hashed
    return None


def unauthenticated() -> faults.Unauthenticated:
    return faults.Unauthenticated(UNAUTHENTICATED_MESSAGE)


class Registry:
    def __init__(
        self,
        *,
        store: base.Store,
        view: view_mod.View,
        clock: clock_mod.Clock,
        config: config_mod.ControlPlaneConfig,
    ) -> None:
        self._store = store
        self._view = view
        self._clock = clock
        self._config = config

    async def get(self, kind: type[base.R], name: str) -> base.R | None:
        try:
            return await self._store.get(kind, name)
        except errors.NotFound:
            return None

    # -- agents -----------------------------------------------------------------------------

    async def register(
        self,
        name: str,
        spec: pnode.PNodeSpec,
        labels: dict[str, str],
        *,
        agent_version: str,
        presented: str | None,
        joined_by: pnode.JoinedBy = "open",
        identity_expires_at: datetime | None = None,
    ) -> pnode.PNode:
        """Create the PNode (incarnation 1) or re-register it (incarnation + 1, which needs
        the `presented` credential to be its current one), with its lease renewed now.
        `joined_by` is recorded on creation only: a re-registration keeps how it joined."""
        # AlreadyExists: registered concurrently; the re-read finds it and checks the
        # credential like any re-registration.
        return await retry.retry_on_conflict(
            lambda: self._register(
                name, spec, labels, agent_version, presented, joined_by, identity_expires_at
            ),
            what=f"register pnode {name!r}",
            also=(errors.AlreadyExists,),
        )

    async def _register(
        self,
        name: str,
        spec: pnode.PNodeSpec,
        labels: dict[str, str],
        agent_version: str,
        presented: str | None,
        joined_by: pnode.JoinedBy,
        identity_expires_at: datetime | None,
    ) -> pnode.PNode:
        spec = spec.model_copy(deep=True)
        existing = await self.get(pnode.PNode, name)
        stored_lease = await self.get(lease.PNodeLease, name)
        now = self._clock.now()
        annotations = {AGENT_VERSION_ANNOTATION: agent_version} if agent_version else {}
        op: base.Op
        if existing is None:
            node = pnode.PNode(
                metadata=meta.ObjectMeta(name=name, labels=labels, annotations=annotations),
                spec=spec,
            )
            node.status.incarnation = 1
            node.status.assignments_version = 1
            node.status.assignments_digest = allocation.EMPTY_DIGEST  # it holds nothing yet
            node.status.joined_by = joined_by
            op = base.Create(node)
        else:
            proven = proven_credential(existing, presented)
            if proven is None:
                raise faults.PermissionDenied(
                    f"pnode {name!r} is already registered; re-registering it needs its "
                    "current credential as 'authorization: Bearer' metadata (an agent that "
                    "lost its credential registers under a new name)",
                )
            node = existing.model_copy(deep=True)
            # The operator's cordon and drain survive an agent restart; the agent's own
            # Deregister is undone by its coming back.
            leaving = lifecycle.DEREGISTERED in {c.type for c in node.status.conditions}
            spec.unschedulable = existing.spec.unschedulable and not leaving
            spec.draining = existing.spec.draining and not leaving
            # The credential just proven stays good for one more Register: should this
            # reply be lost, the agent repeats it with what it still holds.
            spec.previous_credential_hash = proven
            node.spec = spec
            _bump_generation(existing, node)
            node.metadata.labels = labels
            node.metadata.annotations = {**node.metadata.annotations, **annotations}
            node.status.incarnation += 1
            node.status.assignments_version += 1
            node.status.conditions = meta.remove_condition(
                node.status.conditions, lifecycle.DEREGISTERED
            )
            op = base.Update(node)
        node.status.identity.expires_at = identity_expires_at
        node.status.phase = "Ready"
        node.status.phase_since = now
        node.status.registered_at = now
        node.status.conditions = meta.set_condition(
            node.status.conditions,
            type=lifecycle.READY,
            status="True",
            reason="Registered",
            message=f"registered as incarnation {node.status.incarnation}",
            now=now,
        )
        lease_spec = lease.LeaseSpec(
            incarnation=node.status.incarnation,
            renew_time=now,
            duration_seconds=self._config.lease_duration,
        )
        lease_op: base.Op
        if stored_lease is None:
            lease_op = base.Create(
                lease.PNodeLease(metadata=meta.ObjectMeta(name=name), spec=lease_spec)
            )
        else:
            renewed = stored_lease.model_copy(deep=True)
            renewed.spec = lease_spec
            lease_op = base.Update(renewed)
        written = await self._store.transact([op, lease_op])
        self._view.apply_written(written)
        result = written[0]
        assert isinstance(result, pnode.PNode)
        return result

    async def deregister(
        self, name: str, *, incarnation: int, presented: str | None, reason: str
    ) -> bool:
        """True when the PNode is gone (it held nothing); False when it is draining."""

        async def attempt() -> bool:
            node = await self.get(pnode.PNode, name)
            # Unknown and wrong credential answer alike: nothing tells a caller who has not
            # proven the PNode's identity whether the name exists.
            if node is None or not credentials.matches(presented, node.spec.credential_hash):
                raise unauthenticated()
            if incarnation != node.status.incarnation:
                raise faults.FailedPrecondition(
                    f"pnode {name!r}: incarnation {incarnation} is fenced (current is "
                    f"{node.status.incarnation}); register again",
                    reason="Fenced",
                )
            return await self._deregister(node, reason)

        return await retry.retry_on_conflict(attempt, what=f"deregister pnode {name!r}")

    async def _deregister(self, node: pnode.PNode, reason: str) -> bool:
        name = node.name
        held = await self._store.list(allocation.Allocation, index=("pnode", name), limit=1)
        if not held.items:
            stored_lease = await self.get(lease.PNodeLease, name)
            meta_ = node.metadata
            ops: list[base.Op] = [
                base.Delete(
                    pnode.PNode, name, resource_version=meta_.resource_version, uid=meta_.uid
                )
            ]
            if stored_lease is not None:
                lmeta = stored_lease.metadata
                ops.append(
                    base.Delete(
                        lease.PNodeLease,
                        name,
                        resource_version=lmeta.resource_version,
                        uid=lmeta.uid,
                    )
                )
            # Conditioned on the PNode's version: a placement landing meanwhile updates it,
            # so a PNode is never deleted with an allocation on it.
            await self._store.transact(ops)
            self._view.apply_deleted(pnode.PNode, name)
            self._view.apply_deleted(lease.PNodeLease, name)
            log.info("pnode %s deregistered and removed", name)
            return True
        updated = node.model_copy(deep=True)
        updated.spec.unschedulable = True
        updated.spec.draining = True
        _bump_generation(node, updated)
        updated.status.conditions = meta.set_condition(
            updated.status.conditions,
            type=lifecycle.DEREGISTERED,
            status="True",
            reason="AgentDeregistered",
            message=reason or "deregistered by its agent",
            now=self._clock.now(),
        )
        self._view.apply_written([await self._store.update(updated)])
        log.info("pnode %s deregistering: draining its allocations", name)
        return False

    # -- operators --------------------------------------------------------------------------

    async def cordon(self, name: str, reason: str) -> pnode.PNode:
        def change(node: pnode.PNode, now: datetime) -> None:
            node.spec.unschedulable = True
            _admin_condition(node, CORDONED, reason, now)

        return await self._update(name, change)

    async def drain(self, name: str, reason: str) -> pnode.PNode:
        def change(node: pnode.PNode, now: datetime) -> None:
            node.spec.unschedulable = True
            node.spec.draining = True
            _admin_condition(node, DRAINING, reason, now)

        return await self._update(name, change)

    async def uncordon(self, name: str) -> pnode.PNode:
        """Undo cordon, drain and Deregister, and clear Bugged: the operator vouches for the
        machine again (issue 7: "an admin clears it")."""

        def change(node: pnode.PNode, now: datetime) -> None:
            node.spec.unschedulable = False
            node.spec.draining = False
            node.status.trust.bugged = False
            node.status.trust.strikes = 0
            for kind in (CORDONED, DRAINING, lifecycle.DEREGISTERED):
                node.status.conditions = meta.remove_condition(node.status.conditions, kind)

        return await self._update(name, change)

    async def identity_renewed(self, name: str, expires_at: datetime) -> pnode.PNode:
        """Record when the PNode's renewed identity certificate expires."""

        def change(node: pnode.PNode, now: datetime) -> None:
            node.status.identity.expires_at = expires_at

        return await self._update(name, change)

    async def _update(self, name: str, change: Change) -> pnode.PNode:
        async def attempt() -> pnode.PNode:
            node = await self._store.get(pnode.PNode, name)
            updated = node.model_copy(deep=True)
            change(updated, self._clock.now())
            if updated == node:
                return node  # already so: no write, no version bump
            _bump_generation(node, updated)
            written = await self._store.update(updated)
            self._view.apply_written([written])
            return written

        return await retry.retry_on_conflict(attempt, what=f"update pnode {name!r}")


def _admin_condition(node: pnode.PNode, kind: str, reason: str, now: datetime) -> None:
    node.status.conditions = meta.set_condition(
        node.status.conditions,
        type=kind,
        status="True",
        reason="Admin",
        message=reason or f"{kind.lower()} by an operator",
        now=now,
    )
