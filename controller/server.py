"""The orchestrator process: one grpc.aio server, the view, the loops and replica membership.

This module only wires: `Orchestrator` builds every part in dependency order, giving each
its collaborators at construction, registers the loops and the services, and starts and
stops them in order. Decisions live in the parts.

Start order matters: the view is filled before anything answers (a heartbeat must find its
PNode), membership is known before the loops take keys, and the port opens last. Stop
order is the reverse: stop taking calls and finish those in flight, finish in-flight
reconciles, persist pending lease renewals, release the replica lease (so the others take
over at once), close the store.

Events only produce keys: every change the view sees, from this replica's writes or from
the store, is mapped to the loop keys it concerns by the routing table
(`controller.runtime.events`); the loops re-read state themselves.

dcnr.v1 services not implemented yet are registered from their generated base servicers,
so they answer UNIMPLEMENTED rather than being absent (`controller.services.catalog`).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import random
import threading
from dataclasses import dataclass, field
from typing import Any

import grpc
from grpc import aio
from grpc_health.v1 import health, health_pb2

from api import identity, signed
from api import tls as api_tls
from api.dcnr.v1 import (
    job_pb2_grpc,
    network_pb2_grpc,
    pnode_pb2_grpc,
    resolve_pb2_grpc,
    validation_pb2_grpc,
)
from api.resources import meta
from controller import config as config_mod
from controller import metrics
from controller.dashboard import site as dashboard
from controller.jobs import (
    driver,
    driver_context,
    driver_inbox,
    job_loop,
    job_poll,
    job_watch,
    suspects,
    tiebreakers,
    vnode_client,
)
from controller.runtime import clock as clock_mod
from controller.runtime import events, manager, recorder, replicas
from controller.services import (
    addresses,
    admission,
    auth,
    catalog,
    driver_inbox_service,
    job_service,
    network_service,
    pnode_service,
    registration_gate,
    resolution_service,
    rpc_decode,
    rpc_timer,
    validation_service,
    vnode_transport,
)
from controller.state import (
    allocation_status,
    assignment_repair,
    identities,
    identity_ca,
    leases,
    store_watch,
    view,
)
from controller.trust import book as trust
from controller.trust import exposure
from reconcilers import base as reconcilers_base
from reconcilers import network as network_loop
from reconcilers import pnode as pnode_loop
from store import base

log = logging.getLogger("dcnr.server")


@dataclass(frozen=True, slots=True)
class ServeConfig:
    store_url: str
    listen: str = "127.0.0.1:7070"
    metrics_listen: str | None = None
    grace_seconds: float = 10.0
    replica_id: str = ""
    control: config_mod.ControlPlaneConfig = field(default_factory=config_mod.ControlPlaneConfig)
    driver: driver.DriverConfig = field(default_factory=driver.DriverConfig)
    #: Bearer tokens management calls must present; empty: no admin auth (local use).
    admin_tokens: frozenset[str] = frozenset()
    #: The listener's certificate (reloaded when its files change); None: plaintext.
    tls: api_tls.ServerFiles | None = None
    #: Bearer tokens of the read-only role (Get*, List*, Watch*, Resolve*); needs admin_tokens.
    read_only_tokens: frozenset[str] = frozenset()
    #: Join tokens a new PNode must present (`--join-token-file`); empty: open registration.
    join_tokens: frozenset[str] = frozenset()
    #: Rate limits on Register (per address) and the hot calls (per caller).
    admission: admission.Limits = field(default_factory=admission.Limits)
    #: PEM (certificate, key) of the identity CA; None: the store's, created if missing.
    identity_ca: tuple[bytes, bytes] | None = None
    #: Seconds the identity certificates of PNodes and of this replica are valid.
    identity_ttl: float = 3600.0
    #: The cluster's data plane is plaintext (`--data-plane-insecure`), told to agents at
    #: Register; False: TLS with the PNodes' identity certificates.
    data_plane_insecure: bool = False
    #: Where the web dashboard listens (`--ui-listen`, docs/operations.md "Dashboard");
    #: None: off. Same TLS certificate as gRPC, and the admin or read-only token.
    ui_listen: str | None = None
    #: `--driver-listen`: a second listener serving only the driver's inbox, over mutual
    #: TLS with this replica's orchestrator identity (agents present theirs), where
    #: signatures are verified lazily; runs' reply_to names it. None: the inbox is on
    #: `listen` and verifies every signature on receipt.
    driver_listen: str | None = None
    #: The job driver sends each step's batch on Deliver streams (`--no-stream-delivery`:
    #: unary calls; `controller.services.vnode_transport`).
    stream_delivery: bool = True


class Orchestrator:
    """A running replica; `start` brings it up, `stop` drains and releases everything."""

    def __init__(
        self,
        config: ServeConfig,
        store: base.Store,
        *,
        clock: clock_mod.Clock | None = None,
    ) -> None:
        self.config = config
        self.clock = clock or clock_mod.SystemClock()
        control = config.control
        #: What this replica saw of the store: leases do not run while it could not see it.
        self.store_watch = store_watch.StoreWatch(self.clock, stall_after=control.store_stall_after)
        store = store_watch.Observed(store, self.store_watch)
        self.store: base.Store = store
        self.replica_id = config.replica_id or replicas.default_replica_id()
        self.metrics = metrics.Metrics()
        for method, reason in auth.known_refusals():  # at 0 from the start
            self.metrics.rpc_refused.labels(method, reason)
        self.view = view.View(
            store, self.clock, config=control, unobserved=self.store_watch.unobserved
        )
        self.manager = manager.Manager(self.clock, rng=random.Random())
        self.leases = leases.LeaseKeeper(store, self.clock, view=self.view, config=control)
        self.events = recorder.Recorder(
            store=store,
            clock=self.clock,
            replica=self.replica_id,
            ttl=control.event_ttl,
            on_recorded=self.metrics.event,
        )
        self.trust = trust.TrustBook(
            store=store,
            clock=self.clock,
            on_written=self.view.apply_written,
            on_bugged=self._bugged,
            events=self.events,
        )
        self.exposure = exposure.Exposure()
        #: This replica's orchestrator identity, which signs the driver's calls to agents;
        #: the CA and its verifier are loaded at `start`.
        self.signer = signed.Signer()
        self.authority: identity.Authority | None = None
        self._identity_task: asyncio.Task[None] | None = None
        self.client = vnode_client.VNodeClient(
            view=self.view,
            clock=self.clock,
            rpc_timeout=config.driver.rpc_timeout,
            transport=vnode_transport.GrpcTransport(
                signer=self.signer, ca=self._data_plane_ca, streams=config.stream_delivery
            ),
        )
        self.inbox = driver_inbox.Inbox(
            clock=self.clock, book=self.trust, on_disagreed=self.metrics.disagreed
        )
        self.reply_to = driver_context.ReplyTo(config.driver.advertise)
        self.drivers = driver_context.DriverContext(
            store=store,
            view=self.view,
            clock=self.clock,
            config=config.driver,
            replica_id=self.replica_id,
            client=self.client,
            results=driver_context.ResultSinks(
                inbox=self.inbox, book=self.trust, metrics=self.metrics, exposure=self.exposure
            ),
            suspects=suspects.Suspects(view=self.view, book=self.trust),
            tiebreakers=tiebreakers.Tiebreakers(store=store, view=self.view, metrics=self.metrics),
            reply_to=self.reply_to,
            feed=job_watch.JobFeed(self.clock),
            events=self.events,
        )
        self.allocation_status = allocation_status.AllocationStatus(store, self.view)
        self.assignment_repair = assignment_repair.AssignmentRepair(
            store, self.view, self.clock, bound=control.pending_repair_after, events=self.events
        )
        self.job_loop = job_loop.JobLoop(self.drivers)
        self.job_poll = job_poll.JobPoll(
            store,
            self.clock,
            every=control.job_poll,
            running=self.job_loop.running,
            enqueue=lambda name: self.manager.enqueue("job", name),
        )
        self.replicas = replicas.Replicas(
            store,
            self.clock,
            replica_id=self.replica_id,
            address=config.listen,
            lease_seconds=control.replica_lease,
            on_membership_change=self.manager.membership_changed,
            unobserved=self.store_watch.unobserved,
            stall_max=control.store_stall_max,
        )
        self.tokens = auth.Tokens(config.admin_tokens, config.read_only_tokens)
        # No SO_REUSEPORT: a second orchestrator on a taken port must fail, not share it.
        self.server = aio.server(
            options=[("grpc.so_reuseport", 0)],
            # Metrics first, so refused calls (undecodable, unauthenticated) are still timed
            # with their status code.
            interceptors=[
                rpc_timer.RpcTimer(self.metrics),
                rpc_decode.DecodeGuard(on_refused=self.metrics.refused),
                admission.AdmissionLimits(
                    config.admission, self.clock, on_refused=self.metrics.refused
                ),
                *(
                    [auth.AdminTokenInterceptor(self.tokens, on_refused=self.metrics.refused)]
                    if self.tokens.configured
                    else []
                ),
            ],
        )
        # grpc_health ships no stub for its aio module.
        self.health = health.aio.HealthServicer()  # type: ignore[attr-defined]
        self.port = 0
        #: With TLS: the credentials that follow the certificate files.
        self.tls: api_tls.ReloadingServerCredentials | None = None
        self.metrics_port: int | None = None
        self.service_names: list[str] = []
        self.dashboard: dashboard.Dashboard | None = None
        #: With `driver_listen`: the mutual-TLS server of the driver's inbox, and its port.
        self.driver_server: aio.Server | None = None
        self.driver_port = 0
        self._inbox_identity = InboxIdentity()

    # -- wiring -----------------------------------------------------------------------------

    def _register_loops(self) -> None:
        control = self.config.control
        written = self.view.apply_written
        pnode_changes = network_loop.ChangedPNodes()
        self.view.subscribe(pnode_changes.note)
        network_reconciler = network_loop.NetworkReconciler(
            self.store,
            self.clock,
            config=control,
            on_written=written,
            on_deleted=self.view.apply_deleted,
            on_replaced=self.metrics.replaced,
            on_event=self._on_event,
            pnodes=lambda: self.view.pnodes,
            pnode_changes=pnode_changes,
            records=self.view,
        )
        pnode_reconciler = pnode_loop.PNodeReconciler(
            self.store,
            self.clock,
            config=control,
            on_written=written,
            on_deleted=self.view.apply_deleted,
            local_renewal=self.leases.renewed_at,
            unobserved=self.store_watch.unobserved,
            cached=self.view.pnode_and_lease,
        )

        async def network_keys() -> list[str]:
            return self.view.network_keys()

        async def pnode_keys() -> list[str]:
            return sorted(self.view.pnodes)

        for reconciler, keys in (
            (network_reconciler, network_keys),
            (pnode_reconciler, pnode_keys),
        ):
            self.manager.register(
                reconciler,
                workers=control.workers_per_loop,
                resync_every=control.resync_every,
                list_keys=keys,
                owns=self.replicas.owns,
            )
        self.manager.register(
            self.job_loop,
            workers=control.workers_per_loop,
            resync_every=control.resync_every,
            list_keys=self.job_loop.list_keys,
            owns=self.replicas.owns,
        )
        self.metrics.watch_manager(self.manager)
        self.metrics.watch_view(self.view)
        self.metrics.watch_store(self.store_watch)
        self.metrics.watch_pending(self.assignment_repair.oldest_pending)
        self.view.subscribe(self._on_change)

    def _on_event(self, occurred: reconcilers_base.Occurrence) -> None:
        self.events.record(
            occurred.kind,
            occurred.name,
            type=occurred.type,
            reason=occurred.reason,
            message=occurred.message,
        )

    def _on_change(self, old: meta.Resource | None, new: meta.Resource | None) -> None:
        lookup = events.Lookup(self.view.networks_on, self.view.networks_not_ready)
        for loop, key in events.keys_for_change(old, new, lookup):
            self.manager.enqueue(loop, key)

    async def _start_identity(self) -> identity.Authority:
        """Load (or create) the identity CA, issue this replica its orchestrator identity,
        and keep renewing it (`controller.state.identity_ca`)."""
        if self.config.identity_ca is not None:
            authority = identity.Authority.from_pem(*self.config.identity_ca)
        else:
            authority = await identity_ca.load_or_create(self.store, self.clock.now())
        ttl = dt.timedelta(seconds=self.config.identity_ttl)
        own = identity_ca.Own.issue(authority, self.clock.now(), ttl)
        self.signer.update(own.key, own.certificate)
        self._inbox_identity.update(own, authority.certificate_pem)

        async def renew(own: identity_ca.Own) -> None:
            while True:
                wait = (own.renew_at() - self.clock.now()).total_seconds()
                await self.clock.sleep(max(0.0, wait))
                try:
                    own = identity_ca.Own.issue(authority, self.clock.now(), ttl)
                except Exception:  # the current one is valid for 1/3 of its life: try again
                    log.exception("could not renew this replica's orchestrator identity")
                    await self.clock.sleep(ttl.total_seconds() / 30)
                    continue
                self.signer.update(own.key, own.certificate)
                self._inbox_identity.update(own, authority.certificate_pem)
                log.info("renewed this replica's orchestrator identity")

        self._identity_task = asyncio.get_running_loop().create_task(renew(own))
        return authority

    def _data_plane_ca(self) -> bytes | None:
        """What the driver verifies agents' listeners with; None: plaintext."""
        if self.config.data_plane_insecure:
            return None
        if self.authority is None:
            raise RuntimeError("the identity CA is loaded at start: no data-plane call before")
        return self.authority.certificate_pem

    def _add_services(self) -> None:
        control = self.config.control
        assert self.authority is not None  # loaded by start()
        verifier = identity.Verifier(self.authority.certificate_pem)
        implemented: dict[str, tuple[catalog.Add, Any]] = {
            "dcnr.v1.PNodeService": (
                pnode_pb2_grpc.add_PNodeServiceServicer_to_server,
                pnode_service.PNodeService(
                    store=self.store,
                    view=self.view,
                    clock=self.clock,
                    config=control,
                    leases=self.leases,
                    replica_id=self.replica_id,
                    on_heartbeat=self.metrics.heartbeat,
                    on_refused=self.metrics.refused,
                    authority=self.authority,
                    identity_ttl=self.config.identity_ttl,
                    data_plane_plaintext=self.config.data_plane_insecure,
                    driver_mutual_tls=self.config.driver_listen is not None,
                    statuses=self.allocation_status,
                    events=self.events,
                    gate=registration_gate.RegistrationGate(
                        view=self.view,
                        clock=self.clock,
                        config=control,
                        join_tokens=self.config.join_tokens,
                        on_refused=self.metrics.refused,
                    ),
                ),
            ),
            "dcnr.v1.ResolutionService": (
                resolve_pb2_grpc.add_ResolutionServiceServicer_to_server,
                resolution_service.ResolutionService(
                    view=self.view,
                    clock=self.clock,
                    replica_id=self.replica_id,
                    on_resolved=self.metrics.resolved,
                    gate=self._resolve_gate(),
                ),
            ),
            "dcnr.v1.NetworkService": (
                network_pb2_grpc.add_NetworkServiceServicer_to_server,
                network_service.NetworkService(
                    store=self.store,
                    view=self.view,
                    clock=self.clock,
                    config=control,
                    replica_id=self.replica_id,
                ),
            ),
        }
        implemented["dcnr.v1.JobService"] = (
            job_pb2_grpc.add_JobServiceServicer_to_server,
            job_service.JobService(
                context=self.drivers,
                on_changed=lambda job: self.manager.enqueue("job", job.name),
            ),
        )
        # The orchestrator hosts one VNode only: `__driver__`, where sinks send outputs and
        # sources report finished backward passes; agents serve every other VNode.
        def inbox_service(mutual_tls: bool) -> driver_inbox_service.DriverInboxService:
            return driver_inbox_service.DriverInboxService(
                inbox=self.inbox,
                view=self.view,
                clock=self.clock,
                verifier=verifier,
                replica_id=self.replica_id,
                max_message_bytes=self.config.driver.max_message_bytes,
                book=self.trust,
                on_checked=self.metrics.checked,
                on_refused=self.metrics.driver_refused,
                mutual_tls=mutual_tls,
            )

        implemented["dcnr.v1.VNodeService"] = (
            driver_inbox_service.add_to_server,
            inbox_service(mutual_tls=False),
        )
        if self.driver_server is not None:
            driver_inbox_service.add_to_server(inbox_service(mutual_tls=True), self.driver_server)
        implemented["dcnr.v1.ValidationService"] = (
            validation_pb2_grpc.add_ValidationServiceServicer_to_server,
            validation_service.ValidationService(
                store=self.store,
                view=self.view,
                book=self.trust,
                inbox=self.inbox,
                replica_id=self.replica_id,
                on_checked=self.metrics.checked,
                on_refused=self._report_refused,
                on_disagreed=self.metrics.disagreed,
                on_tiebreak=self.metrics.tiebroken,
                # Accusations are acted on only with the accused's signed results.
                verifier=verifier,
                clock=self.clock,
                events=self.events,
                max_evidence_bytes=self.config.driver.max_message_bytes,
            ),
        )
        self.metrics.expect(
            heartbeat_results=pnode_service.HEARTBEAT_RESULTS,
            report_refusals=validation_service.REFUSALS,
            driver_refusals=driver_inbox.REFUSALS,
        )
        self.service_names = catalog.register(self.server, implemented, health=self.health)

    def _bugged(self, pnode_name: str) -> None:
        """A PNode became Bugged: count it, and name the inference answers this replica
        returned with its results unchecked (`controller.trust.exposure`)."""
        self.metrics.bugged(pnode_name)
        found = self.exposure.take(pnode_name)
        if found is not None:
            self.metrics.answers_exposed(found.total)
            self.events.warning("PNode", pnode_name, "UncheckedAnswers", found.message())

    def _report_refused(self, reason: str) -> None:
        self.metrics.report_refused(reason)
        if reason == "unauthenticated":  # the others are judged after the caller proved itself
            self.metrics.refused("/dcnr.v1.ValidationService/ReportResult", "Unauthenticated")

    def _resolve_gate(self) -> auth.ResolveGate | None:
        if not self.tokens.configured:
            return None  # an open cluster: the management API answers anyone too
        return auth.ResolveGate(
            tokens=self.tokens,
            identities=identities.Identities(self.view),
            view=self.view,
            on_refused=self.metrics.refused,
        )

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        await self.view.refresh()
        self.authority = await self._start_identity()
        await self.replicas.start()
        self._register_loops()
        await self.manager.start()
        self.view.start()
        self.leases.start()
        self.trust.start()
        self.events.start()
        self.job_poll.start()
        self.assignment_repair.start()
        if self.config.driver_listen is not None:
            self.driver_server = aio.server(
                options=[("grpc.so_reuseport", 0)],
                interceptors=[
                    rpc_timer.RpcTimer(self.metrics),
                    rpc_decode.DecodeGuard(on_refused=self.metrics.refused),
                ],
            )
        self._add_services()
        if self.config.tls is not None:
            # Reads and checks the files here (TlsError names the flag), before the port opens.
            self.tls = api_tls.ReloadingServerCredentials(self.config.tls)
        try:
            if self.tls is not None:
                self.port = self.server.add_secure_port(self.config.listen, self.tls.credentials())
            else:
                self.port = self.server.add_insecure_port(self.config.listen)
        except RuntimeError as exc:
            raise OSError(f"--listen {self.config.listen}: cannot bind ({exc})") from None
        if self.port == 0:
            raise OSError(f"--listen {self.config.listen}: cannot bind")
        if self.driver_server is not None and self.config.driver_listen is not None:
            listen = self.config.driver_listen
            try:
                self.driver_port = self.driver_server.add_secure_port(
                    listen, self._inbox_identity.server_credentials()
                )
            except RuntimeError as exc:
                raise OSError(f"--driver-listen {listen}: cannot bind ({exc})") from None
            if self.driver_port == 0:
                raise OSError(f"--driver-listen {listen}: cannot bind")
            self.reply_to.bound(
                self.config.driver.advertise or addresses.advertised(listen, self.driver_port)
            )
            await self.driver_server.start()
        else:
            self.reply_to.bound(
                self.config.driver.advertise
                or addresses.advertised(self.config.listen, self.port)
            )
        if self.config.metrics_listen:
            host, port = addresses.split(self.config.metrics_listen, "--metrics-listen")
            self.metrics_port = self.metrics.start_http(host, port)
        if self.config.ui_listen:
            host, port = addresses.split(self.config.ui_listen, "--ui-listen")
            self.dashboard = dashboard.Dashboard(
                view=self.view,
                store=self.store,
                clock=self.clock,
                tokens=self.tokens,
                feed=self.drivers.feed,
                tls=self.config.tls,
            )
            try:
                await self.dashboard.start(host, port)
            except OSError as exc:
                raise OSError(f"--ui-listen {self.config.ui_listen}: cannot bind ({exc})") from None
        await self.server.start()
        for name in ["", *self.service_names]:
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)

    @property
    def ui_url(self) -> str | None:
        """The dashboard's address for a browser on this machine; None when it is off."""
        if self.dashboard is None or not self.config.ui_listen:
            return None
        host = self.config.ui_listen.rsplit(":", 1)[0]
        if host.strip("[]") in ("", "0.0.0.0", "::"):
            host = "127.0.0.1"
        return f"{self.dashboard.scheme}://{host}:{self.dashboard.port}/"

    async def stop(self) -> None:
        grace = self.config.grace_seconds
        await self.health.enter_graceful_shutdown()
        if self.dashboard is not None:
            await self.dashboard.stop()
        # Driver tasks stop first; their jobs stay Running for whichever replica owns them next.
        await self.job_poll.stop()
        await self.job_loop.stop()
        # Together: both hold streams that end only with the grace (agents' watches; their
        # Deliver streams to the driver's inbox), so one after the other took it twice.
        servers = [self.server, *([self.driver_server] if self.driver_server else [])]
        await asyncio.gather(*(server.stop(grace) for server in servers))
        await self.manager.stop(grace)  # never started: nothing to wait for
        await self.client.close()
        if self._identity_task is not None:
            self._identity_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._identity_task
        for step in (
            self.assignment_repair.stop,
            self.allocation_status.stop,
            self.leases.stop,
            self.trust.stop,
            self.events.stop,
            self.replicas.stop,
            self.view.stop,
        ):
            try:
                await step()
            except Exception:
                log.exception("shutdown step failed", extra={"fields": {"step": repr(step)}})
        if self.metrics_port is not None:
            await asyncio.to_thread(self.metrics.stop_http)
        await self.store.close()


class InboxIdentity:
    """This replica's orchestrator identity as the TLS certificate of the driver's mutual-TLS
    inbox listener (`--driver-listen`), following renewals: agents present their identity
    certificates, so the listener requires a client certificate of the identity CA."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pair: tuple[bytes, bytes, bytes] | None = None  # key, certificate, CA (PEM)
        self._generation = 0
        self._served = 0

    def update(self, own: identity_ca.Own, ca_pem: bytes) -> None:
        with self._lock:
            self._pair = (identity.key_pem(own.key), own.certificate, ca_pem)
            self._generation += 1

    def server_credentials(self) -> grpc.ServerCredentials:
        initial = self.fetch()
        if initial is None:
            raise RuntimeError("no orchestrator identity yet: it is issued at start")
        fetch: Any = self.fetch  # grpc's stub omits None ("no change")
        return grpc.dynamic_ssl_server_credentials(
            initial, fetch, require_client_authentication=True
        )

    def fetch(self) -> grpc.ServerCertificateConfiguration | None:
        """The current certificate if it changed since gRPC last asked, else None (keep)."""
        with self._lock:
            if self._pair is None or self._served == self._generation:
                return None
            self._served = self._generation
            key, certificate, ca = self._pair
        return grpc.ssl_server_certificate_configuration(
            [(key, certificate)], root_certificates=ca
        )
