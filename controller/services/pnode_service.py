"""gRPC PNodeService: registration, heartbeats and assignments for agents; PNode admin.

The heartbeat is the hottest call in the system, so it reads no store: the credential is
checked against the in-memory view's PNode, the renewal is noted in memory (the view answers
liveness from it at once) and persisted coalesced by `controller.state.leases`. The view is
consulted again from the store only when its answer would be "no" for a reason a lagging
view could cause (unknown name, newer incarnation, no lease), at most once per PNode per
refresh interval, so forged credentials cannot turn into store load.

Order of checks on an agent call: unknown PNode, or wrong or missing credential →
UNAUTHENTICATED, the same status, message and details for both, so that no answer tells a
caller who has not proven a PNode's identity whether that name exists (a garbage-collected
PNode's agent takes it as a fence and registers again); stale incarnation, expired lease or
Lost → FENCED without renewal. Register of a taken name without its credential is the one
deliberate exception (docs/security.md, "Authorization"). Refusals are counted
(`on_refused(method, reason)`, `dcnr_rpc_refused_total`).

Register and Deregister write the store (one transaction each) and the view, so the
PNode's own next heartbeat on this replica already sees it.

Deregister design: with nothing placed on the PNode it is deleted at once (deregistered =
true); otherwise it becomes draining and unschedulable with condition Deregistered=True, the
network loop migrates its work as for any drain, and the lifecycle loop
(`reconcilers.pnode`) deletes the PNode once it holds no allocation. A Register of the same
PNode before that (the agent changed its mind) clears the condition and the flags
Deregister set. Uncordon clears cordon, drain, Deregistered and Bugged (trust.bugged and
strikes: the admin's word clears it, as issue 7 asks).

Identity (docs/security.md): Register must carry a CSR for the agent's key; the answer
carries a certificate from the identity CA naming the registered PNode (whatever the CSR
asked), the CA bundle, and the expiry, which is also written to `status.identity`. A
heartbeat carrying a CSR (the agent sends one once 2/3 of its certificate's life has passed)
is answered with a renewed certificate; issuing costs ~1 ms of CPU, so it happens only
when asked, and the expiry is written to the store off the heartbeat's path.

Admin calls (Cordon, Uncordon, Drain, GetPNode, ListPNodes) read the store, not the view:
they are rare and must not act on a stale record. The credential hash never leaves the
server: documents omit it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from datetime import datetime, timedelta
from typing import Any, Literal, get_args

from grpc import aio

from api import identity
from api import labels as selectors
from api.dcnr.v1 import pnode_pb2, pnode_pb2_grpc
from api.resources import allocation, lease, pnode
from controller import config as config_mod
from controller import errors as faults
from controller.runtime import clock as clock_mod
from controller.runtime import recorder
from controller.services import pnode_wire as wire
from controller.services import registration_gate, rpc
from controller.state import allocation_status, credentials
from controller.state import leases as leases_mod
from controller.state import pnode_registry as registry
from controller.state import view as view_mod
from store import base

log = logging.getLogger("dcnr.pnode_service")

#: A heartbeat's result: the label values of `dcnr_heartbeats_total`, exported from the start.
HeartbeatResult = Literal["active", "fenced"]
HEARTBEAT_RESULTS: tuple[HeartbeatResult, ...] = get_args(HeartbeatResult)

ACTIVE = pnode_pb2.LEASE_STATE_ACTIVE
FENCED = pnode_pb2.LEASE_STATE_FENCED
DEFAULT_PAGE = 100
MAX_PAGE = 1000
MAX_REASON = 1024
#: Statuses a heartbeat may carry beyond the PNode's current assignments (slots being
#: replaced, failures of slots just removed); an agent that has not applied the newest set
#: yet may report its older one, up to MAX_STATUSES_LAGGING (docs/security.md, "Limits").
STATUS_SLACK = 8
MAX_STATUSES_LAGGING = 1024
_REREAD_TABLE_LIMIT = 10_000
_METHOD = "/dcnr.v1.PNodeService/"

Context = aio.ServicerContext[Any, Any]


class PNodeService(pnode_pb2_grpc.PNodeServiceServicer):
    def __init__(
        self,
        *,
        store: base.Store,
        view: view_mod.View,
        clock: clock_mod.Clock,
        config: config_mod.ControlPlaneConfig,
        leases: leases_mod.LeaseKeeper,
        replica_id: str,
        on_heartbeat: Callable[[HeartbeatResult], None] | None = None,
        authority: identity.Authority,
        identity_ttl: float = 3600.0,
        data_plane_plaintext: bool = False,
        driver_mutual_tls: bool = False,
        statuses: allocation_status.AllocationStatus | None = None,
        events: recorder.Recorder | None = None,
        on_refused: Callable[[str, str], None] | None = None,
        gate: registration_gate.RegistrationGate | None = None,
    ) -> None:
        """`on_heartbeat(result)` counts each heartbeat: "active" or "fenced"; `statuses`
        turns the agent's reports into allocation status; `events` hears of registrations
        and fenced heartbeats, for people; `gate` admits new PNodes (default: open, with
        the configured pending cap); `authority` issues PNode identities, valid for
        `identity_ttl` seconds."""
        self._authority = authority
        self._identity_ttl = timedelta(seconds=identity_ttl)
        self._data_plane_plaintext = data_plane_plaintext
        self._driver_mutual_tls = driver_mutual_tls
        self._identity_writes: set[asyncio.Task[None]] = set()
        self._statuses = statuses
        self._on_refused = on_refused or (lambda _method, _reason: None)
        self._events = events
        self._on_heartbeat = on_heartbeat or (lambda _result: None)
        self._store = store
        self._view = view
        self._clock = clock
        self._config = config
        self._leases = leases
        self._replica_id = replica_id
        self._reread_at: dict[str, float] = {}
        self._registry = registry.Registry(store=store, view=view, clock=clock, config=config)
        self._gate = gate or registration_gate.RegistrationGate(
            view=view, clock=clock, config=config
        )

    # -- agent calls ------------------------------------------------------------------------

    @rpc.handler
    async def Register(
        self, request: pnode_pb2.RegisterRequest, context: Context
    ) -> pnode_pb2.RegisterResponse:
        name = wire.check_name(request.name, "name") if request.name else wire.generated_name()
        spec, node_labels = wire.registration(request)
        if not request.csr:
            raise faults.FieldInvalid(
                "csr", "", "required: a PEM certificate signing request for the agent's key"
            )
        presented = rpc.bearer(context)
        joined_by = await self._gate.admit(
            request.name,
            join_token=request.join_token,
            presented=presented,
            lookup=lambda n: self._registry.get(pnode.PNode, n),
        )
        now = self._clock.now()
        certificate = self._issue(request.csr, name, now)
        credential, hashed = credentials.issue()
        spec.credential_hash = hashed
        try:
            node = await self._registry.register(
                name,
                spec,
                node_labels,
                agent_version=request.agent_version,
                presented=presented,
                joined_by=joined_by,
                identity_expires_at=now + self._identity_ttl,
            )
        except faults.PermissionDenied:
            self._on_refused(_METHOD + "Register", "NameTaken")
            raise
        if self._events is not None:
            self._events.normal(
                "PNode", name, "Registered",
                f"agent registered, incarnation {node.status.incarnation}",
            )  # fmt: skip
        log.info(
            "pnode %s registered, incarnation %d",
            name,
            node.status.incarnation,
            extra={"fields": {"pnode": name, "incarnation": node.status.incarnation}},
        )
        return pnode_pb2.RegisterResponse(
            header=rpc.response_header(request.header, self._replica_id),
            pnode_id=name,
            credential=credential,
            heartbeat_interval=wire.duration(self._config.heartbeat_interval),
            lease_duration=wire.duration(self._config.lease_duration),
            incarnation=node.status.incarnation,
            certificate=certificate,
            identity_ca=self._authority.certificate_pem,
            certificate_expires_at=wire.timestamp(now + self._identity_ttl),
            data_plane_plaintext=self._data_plane_plaintext,
            driver_mutual_tls=self._driver_mutual_tls,
        )

    def _issue(self, csr: bytes, name: str, now: datetime) -> bytes:
        try:
            return self._authority.issue_pnode(csr, name, now, self._identity_ttl)
        except identity.IdentityError as exc:
            raise faults.FieldInvalid(
                "csr", f"{len(csr)} bytes", f"a valid PEM CSR for an ECDSA P-256 key ({exc})"
            ) from None

    def _renew(self, name: str, csr: bytes, now: datetime, response: Any) -> None:
        """Answer a heartbeat's CSR with a certificate, and record its expiry in the PNode's
        status on a task of its own (a store write the heartbeat does not wait for)."""
        response.certificate = self._issue(csr, name, now)
        expires = now + self._identity_ttl
        response.certificate_expires_at.CopyFrom(wire.timestamp(expires))
        task = asyncio.get_running_loop().create_task(self._record_identity(name, expires))
        self._identity_writes.add(task)
        task.add_done_callback(self._identity_writes.discard)

    async def _record_identity(self, name: str, expires: datetime) -> None:
        try:
            await self._registry.identity_renewed(name, expires)
        except Exception as exc:  # the certificate is valid either way; status is for people
            log.warning("pnode %s: identity expiry not recorded: %s", name, exc)

    @rpc.handler
    async def Heartbeat(
        self, request: pnode_pb2.HeartbeatRequest, context: Context
    ) -> pnode_pb2.HeartbeatResponse:
        name = wire.check_name(request.pnode_id, "pnode_id")
        node = await self._authenticate(
            name, rpc.bearer(context), request.incarnation, method="Heartbeat"
        )
        self._check_statuses(name, request)
        now = self._clock.now()
        response = pnode_pb2.HeartbeatResponse(
            header=rpc.response_header(request.header, self._replica_id),
            lease_duration=wire.duration(self._config.lease_duration),
            heartbeat_interval=wire.duration(self._config.heartbeat_interval),
        )
        fenced = self._fenced(name, node, request.incarnation, now)
        if fenced:
            log.info("pnode %s: heartbeat fenced (%s)", name, fenced)
            if self._events is not None:
                self._events.warning(
                    "PNode", name, "Fenced",
                    f"heartbeat of incarnation {request.incarnation} refused: {fenced};"
                    " the agent drops its VNodes and registers again",
                )  # fmt: skip
            response.lease_state = FENCED
            self._on_heartbeat("fenced")
            return response
        if request.csr:
            self._renew(name, request.csr, now, response)
        self._leases.note(name, request.incarnation, now)  # the view's liveness reads it too
        response.lease_state = ACTIVE
        self._on_heartbeat("active")
        if self._statuses is not None and request.assignment_statuses:
            self._statuses.observe(name, request.assignment_statuses)
        response.lease_expires_at.CopyFrom(
            wire.timestamp(now + timedelta(seconds=self._config.lease_duration))
        )
        response.cordoned = node.spec.unschedulable
        response.draining = node.spec.draining
        aset = self._view.assignment_set(name)
        if aset is not None:
            response.assignment_set_version = aset.version
            if aset.version > request.known_assignment_set_version:
                response.assignment_set.CopyFrom(wire.assignment_set(aset))
        return response

    async def WatchAssignments(
        self, request: pnode_pb2.WatchAssignmentsRequest, context: Context
    ) -> AsyncIterator[pnode_pb2.WatchAssignmentsResponse]:
        name = request.pnode_id
        try:
            rpc.check_header(request.header)
            wire.check_name(name, "pnode_id")
            await self._authenticate(
                name, rpc.bearer(context), request.incarnation, method="WatchAssignments"
            )
        except Exception as exc:
            await rpc.abort(context, exc)
            return
        known = request.known_assignment_set_version
        signal = self._view.pnode_signal(name)
        while True:
            seen = signal.value  # read before the state, so no change slips between
            now = self._clock.now()
            node = self._view.pnodes.get(name)
            if node is None or self._fenced(name, node, request.incarnation, now):
                yield pnode_pb2.WatchAssignmentsResponse(lease_state=FENCED)
                return
            aset = self._view.assignment_set(name)
            if aset is not None and aset.version > known:
                yield pnode_pb2.WatchAssignmentsResponse(
                    lease_state=ACTIVE, assignment_set=wire.assignment_set(aset)
                )
                known = aset.version
            wait = self._config.heartbeat_interval
            expiry = self._view.lease_expiry(name)
            if expiry is not None:  # wake when the lease would run out, to end the stream
                wait = min(wait, max(0.0, (expiry - now).total_seconds()) + 0.01)
            await signal.wait_past(seen, within=wait)

    @rpc.handler
    async def Deregister(
        self, request: pnode_pb2.DeregisterRequest, context: Context
    ) -> pnode_pb2.DeregisterResponse:
        name = wire.check_name(request.pnode_id, "pnode_id")
        if len(request.reason) > MAX_REASON:
            raise faults.FieldInvalid(
                "reason", request.reason[:20] + "...", "at most 1024 characters"
            )
        try:
            gone = await self._registry.deregister(
                name,
                incarnation=request.incarnation,
                presented=rpc.bearer(context),
                reason=request.reason,
            )
        except faults.Unauthenticated:
            self._on_refused(_METHOD + "Deregister", "Unauthenticated")
            raise
        return pnode_pb2.DeregisterResponse(
            header=rpc.response_header(request.header, self._replica_id), deregistered=gone
        )

    # -- admin calls ------------------------------------------------------------------------

    @rpc.handler
    async def Cordon(
        self, request: pnode_pb2.CordonRequest, context: Context
    ) -> pnode_pb2.CordonResponse:
        node = await self._registry.cordon(
            self._admin_name(request.pnode, request.reason), request.reason
        )
        return pnode_pb2.CordonResponse(
            header=rpc.response_header(request.header, self._replica_id),
            pnode=wire.document(node),
        )

    @rpc.handler
    async def Drain(
        self, request: pnode_pb2.DrainRequest, context: Context
    ) -> pnode_pb2.DrainResponse:
        node = await self._registry.drain(
            self._admin_name(request.pnode, request.reason), request.reason
        )
        held = await base.list_all(self._store, allocation.Allocation, index=("pnode", node.name))
        return pnode_pb2.DrainResponse(
            header=rpc.response_header(request.header, self._replica_id),
            pnode=wire.document(node),
            migrating_allocations=len(held),
        )

    @rpc.handler
    async def Uncordon(
        self, request: pnode_pb2.UncordonRequest, context: Context
    ) -> pnode_pb2.UncordonResponse:
        node = await self._registry.uncordon(self._admin_name(request.pnode, ""))
        return pnode_pb2.UncordonResponse(
            header=rpc.response_header(request.header, self._replica_id),
            pnode=wire.document(node),
        )

    @rpc.handler
    async def GetPNode(
        self, request: pnode_pb2.GetPNodeRequest, context: Context
    ) -> pnode_pb2.GetPNodeResponse:
        name = wire.check_name(request.name, "name")
        node = await self._store.get(pnode.PNode, name)
        return pnode_pb2.GetPNodeResponse(
            header=rpc.response_header(request.header, self._replica_id),
            pnode=wire.document(node),
        )

    @rpc.handler
    async def ListPNodes(
        self, request: pnode_pb2.ListPNodesRequest, context: Context
    ) -> pnode_pb2.ListPNodesResponse:
        try:
            selector = selectors.parse_selector(request.label_selector)
        except selectors.SelectorError as exc:
            raise faults.FieldInvalid("label_selector", request.label_selector, str(exc)) from None
        if not 0 <= request.limit <= MAX_PAGE:
            raise faults.FieldInvalid("limit", request.limit, f"must be between 0 and {MAX_PAGE}")
        limit = request.limit or DEFAULT_PAGE
        token = request.continue_token or None
        items: list[pnode.PNode] = []
        # Each store page asks only for what is still missing, so a page never has to be cut
        # (an opaque token cannot resume in the middle of one).
        while len(items) < limit:
            page = await self._store.list(
                pnode.PNode, limit=limit - len(items), continue_token=token
            )
            items.extend(n for n in page.items if selector.matches(n.metadata.labels))
            token = page.continue_token
            if token is None:
                break
        return pnode_pb2.ListPNodesResponse(
            header=rpc.response_header(request.header, self._replica_id),
            items=[wire.document(n) for n in items],
            continue_token=token or "",
        )

    # -- helpers ----------------------------------------------------------------------------

    def _check_statuses(self, name: str, request: pnode_pb2.HeartbeatRequest) -> None:
        """Refuse, before any work, more statuses than the PNode can hold (issue 11)."""
        aset = self._view.assignment_set(name)
        cap = (len(aset.assignments) if aset is not None else 0) + STATUS_SLACK
        if aset is None or not aset.settled or request.known_assignment_set_version < aset.version:
            cap = max(cap, MAX_STATUSES_LAGGING)  # it may still report an older set
        if len(request.assignment_statuses) > cap:
            self._gate.count_refusal(_METHOD + "Heartbeat", "TooMany")
            raise faults.ResourceExhausted(
                f"assignment_statuses: {len(request.assignment_statuses)} entries; this PNode "
                f"may report at most {cap} (its assignments plus {STATUS_SLACK})",
                reason="TooMany",
            )

    async def _authenticate(
        self, name: str, presented: str | None, incarnation: int, *, method: str
    ) -> pnode.PNode:
        """The PNode if `presented` is its credential; UNAUTHENTICATED otherwise, the same
        answer whether or not a PNode of that name exists."""
        node = self._view.pnodes.get(name)
        if (
            node is None
            or incarnation > node.status.incarnation
            or self._view.lease_expiry(name) is None
            or not credentials.matches(presented, node.spec.credential_hash)
        ):
            node = await self._reread(name) or node
        if node is None or not credentials.matches(presented, node.spec.credential_hash):
            self._on_refused(_METHOD + method, "Unauthenticated")
            raise registry.unauthenticated()
        return node

    async def _reread(self, name: str) -> pnode.PNode | None:
        """The PNode and lease from the store, into the view, when the view may lag (at most
        once per PNode per refresh interval)."""
        now = self._clock.monotonic()
        if now - self._reread_at.get(name, float("-inf")) < self._config.view_refresh:
            return None
        if len(self._reread_at) >= _REREAD_TABLE_LIMIT:
            horizon = now - self._config.view_refresh
            self._reread_at = {k: t for k, t in self._reread_at.items() if t >= horizon}
        self._reread_at[name] = now
        node = await self._registry.get(pnode.PNode, name)
        if node is not None:
            self._view.apply_written([node, await self._registry.get(lease.PNodeLease, name)])
        return self._view.pnodes.get(name) if node is not None else None

    def _fenced(
        self, name: str, node: pnode.PNode | None, incarnation: int, now: datetime
    ) -> str | None:
        """Why a call of this incarnation is fenced now, or None if its lease holds."""
        if node is None:
            return "unknown pnode"
        if incarnation != node.status.incarnation:
            return f"incarnation {incarnation} is not the current {node.status.incarnation}"
        if node.status.phase == "Lost":
            return "the pnode is Lost and its work was moved"
        expiry = self._view.lease_expiry(name)
        if expiry is None or expiry <= now:
            return "the lease expired"
        return None

    def _admin_name(self, name: str, reason: str) -> str:
        if len(reason) > MAX_REASON:
            raise faults.FieldInvalid(
                "reason", reason[:20] + "...", f"at most {MAX_REASON} characters"
            )
        return wire.check_name(name, "pnode")
