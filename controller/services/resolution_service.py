"""ResolutionService: where a VNode's replicas run now, answered from the in-memory view.

Agents resolve peers far more often than anything else is written, so every answer comes
from `controller.state.view.View` and never costs a store read. Freshness is the view's job
(write-through plus periodic refresh); correctness is judged here, at the moment of the
question: `View.endpoints` keeps only allocations whose PNode is Ready with a lease that
holds *now* and whose epoch is the slot's current one (DESIGN.md invariant 3). So an
expired lease drops its endpoints from the next answer without any store write, and
`WatchEndpoints` wakes itself at the next lease expiry for the same reason.

Who may ask (`controller.services.auth.ResolveGate`, when the server has tokens): admin and
read-only tokens, and PNodes hosting a VNode of the network asked about. The gate runs
after the fields are checked for being present and before any name is looked up, so a
caller not entitled to a network gets the same answer whether or not it exists; only an
entitled caller's NOT_FOUND lists the network's VNodes. A `WatchEndpoints` stream is checked
again before each message it sends, so a PNode that no longer hosts part of the network (or
registered again, with a new credential) gets PERMISSION_DENIED or UNAUTHENTICATED instead
of the next change.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from datetime import datetime
from typing import Any

from grpc import aio

from api.dcnr.v1 import resolve_pb2, resolve_pb2_grpc
from api.resources import network as net_model
from controller import errors as faults
from controller.runtime import clock as clock_mod
from controller.services import auth, rpc
from controller.state import view as view_mod

log = logging.getLogger("dcnr.resolution")

#: Known VNodes listed in a NOT_FOUND message; a 10,000-VNode network must not make the
#: error message enormous.
MAX_LISTED_VNODES = 20
#: VNodes one BatchResolve may ask for.
MAX_BATCH = 10_000
#: A watch re-evaluates at least this often (seconds) even when nothing is written: a
#: lease that expires without any write must still drop its endpoints from the stream.
MAX_WATCH_WAIT = 1.0
#: ... and at most this often, so a lease that is already past expiry (its PNode not yet
#: marked NotReady) cannot make the watch spin.
MIN_WATCH_WAIT = 0.05

OnResolved = Callable[[int], None]


def _no_count(count: int) -> None:
    return None


class ResolutionService(resolve_pb2_grpc.ResolutionServiceServicer):
    def __init__(
        self,
        *,
        view: view_mod.View,
        clock: clock_mod.Clock,
        replica_id: str,
        on_resolved: OnResolved | None = None,
        gate: auth.ResolveGate | None = None,
    ) -> None:
        """`gate`: who may resolve which network; None answers anyone (a server with no
        tokens, where the whole management API is open too)."""
        self._gate = gate
        self._view = view
        self._clock = clock
        self._replica_id = replica_id
        #: Called with the number of VNodes resolved by each call (metrics).
        self._on_resolved = on_resolved or _no_count

    # -- unary ------------------------------------------------------------------------------

    @rpc.handler
    async def Resolve(
        self, request: resolve_pb2.ResolveRequest, context: aio.ServicerContext[Any, Any]
    ) -> resolve_pb2.ResolveResponse:
        fields = ("network", "vnode")
        _check_fields(fields, request.network, request.vnode)
        self._authorize(context, "Resolve", (request.network,))
        self._check_ref(fields, request.network, request.vnode)
        if request.min_epoch < 0:
            raise faults.FieldInvalid("min_epoch", request.min_epoch, "must be >= 0 (0: not given)")
        endpoints = self._view.endpoints(request.network, request.vnode, self._clock.now())
        if request.min_epoch:
            # The caller saw an epoch refused as stale: never hand it back an older one.
            endpoints = [e for e in endpoints if e.epoch >= request.min_epoch]
        self._count(1)
        return resolve_pb2.ResolveResponse(
            header=rpc.response_header(request.header, self._replica_id),
            endpoints=_message(request.network, request.vnode, endpoints),
        )

    @rpc.handler
    async def BatchResolve(
        self, request: resolve_pb2.BatchResolveRequest, context: aio.ServicerContext[Any, Any]
    ) -> resolve_pb2.BatchResolveResponse:
        if len(request.vnodes) > MAX_BATCH:
            raise faults.FieldInvalid(
                "vnodes", f"{len(request.vnodes)} entries", f"at most {MAX_BATCH} per call"
            )
        names = [(f"vnodes[{i}].network", f"vnodes[{i}].vnode") for i in range(len(request.vnodes))]
        for fields, ref in zip(names, request.vnodes, strict=True):
            _check_fields(fields, ref.network, ref.vnode)
        self._authorize(context, "BatchResolve", {ref.network for ref in request.vnodes})
        for fields, ref in zip(names, request.vnodes, strict=True):
            self._check_ref(fields, ref.network, ref.vnode)
        now = self._clock.now()
        answers = [self._resolve(ref.network, ref.vnode, now) for ref in request.vnodes]
        self._count(len(answers))
        return resolve_pb2.BatchResolveResponse(
            header=rpc.response_header(request.header, self._replica_id), endpoints=answers
        )

    # -- stream -----------------------------------------------------------------------------

    async def WatchEndpoints(
        self, request: resolve_pb2.WatchEndpointsRequest, context: aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[resolve_pb2.WatchEndpointsResponse]:
        try:
            rpc.check_header(request.header)
            if not request.network:
                raise faults.FieldInvalid("network", request.network, "must name a network")
            if len(request.vnodes) > MAX_BATCH:
                raise faults.ResourceExhausted(
                    f"vnodes: {len(request.vnodes)} entries; at most {MAX_BATCH} per watch",
                    reason="TooMany",
                )
            for i, vnode in enumerate(request.vnodes):
                _check_fields(("network", f"vnodes[{i}]"), request.network, vnode)
            self._authorize(context, "WatchEndpoints", (request.network,))
            for i, vnode in enumerate(request.vnodes):
                self._check_ref(("network", f"vnodes[{i}]"), request.network, vnode)
            if not request.vnodes:
                self._network(request.network)  # NOT_FOUND for an unknown network
        except Exception as exc:
            await rpc.abort(context, exc)
            return
        async for message in self._watch(request.network, tuple(request.vnodes)):
            try:  # still entitled? a PNode whose last VNode of the network moved is not
                self._authorize(context, "WatchEndpoints", (request.network,))
            except Exception as exc:
                await rpc.abort(context, exc)
                return
            yield message

    async def _watch(
        self, network: str, wanted: Sequence[str]
    ) -> AsyncIterator[resolve_pb2.WatchEndpointsResponse]:
        signal = self._view.network_signal(network)
        sent: dict[str, list[view_mod.Endpoint]] = {}
        sequence = 0
        first = True
        while True:
            seen = signal.value  # read before computing, so no change slips in between
            now = self._clock.now()
            names = list(wanted) or self._names(network)
            current = {name: self._view.endpoints(network, name, now) for name in names}
            changed = [name for name in names if first or sent.get(name) != current[name]]
            # Watching all: a VNode removed from the spec is sent once more, empty.
            gone = [name for name in sent if name not in current]
            if changed or gone:
                sequence += 1
                self._count(len(changed))
                yield resolve_pb2.WatchEndpointsResponse(
                    changed=[_message(network, name, current[name]) for name in changed]
                    + [_message(network, name, ()) for name in gone],
                    sequence=sequence,
                )
            sent = current
            first = False
            # Bounded on the view's clock: lease expiry is judged on it, so a FakeClock
            # driven past an expiry wakes the watch exactly then.
            await signal.wait_past(seen, within=self._within(current, now))

    def _names(self, network: str) -> list[str]:
        net = self._view.networks.get(network)
        return [] if net is None else [v.name for v in net.spec.vnodes]

    def _within(self, current: dict[str, list[view_mod.Endpoint]], now: datetime) -> float:
        """Seconds until the earliest lease among the endpoints sent expires (capped)."""
        wait = MAX_WATCH_WAIT
        for endpoints in current.values():
            for endpoint in endpoints:
                expiry = self._view.lease_expiry(endpoint.pnode)
                if expiry is not None:
                    wait = min(wait, (expiry - now).total_seconds())
        return max(wait, MIN_WATCH_WAIT)

    # -- shared -----------------------------------------------------------------------------

    def _authorize(
        self, context: aio.ServicerContext[Any, Any], method: str, networks: Iterable[str]
    ) -> None:
        if self._gate is not None:
            self._gate.check(
                f"/dcnr.v1.ResolutionService/{method}", rpc.bearer(context), sorted(networks)
            )

    def _check_ref(self, fields: tuple[str, str], network: str, vnode: str) -> None:
        """NOT_FOUND for names the view does not know (the fields were checked present by
        `_check_fields`); `fields` names the request's network and vnode fields."""
        _, vnode_field = fields
        net = self._network(network)
        if net.vnode(vnode) is None:
            raise faults.NotFound(
                f"{vnode_field}: network {network!r} has no vnode {vnode!r} "
                f"(its vnodes: {_listed(v.name for v in net.spec.vnodes)})",
            )

    def _network(self, name: str) -> net_model.Network:
        net = self._view.networks.get(name)
        if net is None:
            raise faults.NotFound(f"network {name!r} not found")
        return net

    def _resolve(self, network: str, vnode: str, now: datetime) -> resolve_pb2.VNodeEndpoints:
        return _message(network, vnode, self._view.endpoints(network, vnode, now))

    def _count(self, count: int) -> None:
        try:
            self._on_resolved(count)
        except Exception:
            log.exception("resolution counter failed")


def _check_fields(fields: tuple[str, str], network: str, vnode: str) -> None:
    """INVALID_ARGUMENT for empty fields; `fields` names them in the message."""
    network_field, vnode_field = fields
    if not network:
        raise faults.FieldInvalid(network_field, network, "must name a network")
    if not vnode:
        raise faults.FieldInvalid(vnode_field, vnode, "must name a vnode of the network")


def _message(
    network: str, vnode: str, endpoints: Iterable[view_mod.Endpoint]
) -> resolve_pb2.VNodeEndpoints:
    return resolve_pb2.VNodeEndpoints(
        network=network,
        vnode=vnode,
        endpoints=[
            resolve_pb2.Endpoint(
                pnode_id=e.pnode, address=e.address, replica=e.replica, epoch=e.epoch
            )
            for e in endpoints
        ],
    )


def _listed(names: Iterable[str]) -> str:
    shown: list[str] = []
    total = 0
    for name in names:
        total += 1
        if len(shown) < MAX_LISTED_VNODES:
            shown.append(name)
    more = total - len(shown)
    return ", ".join(shown) + (f" and {more} more" if more > 0 else "")
