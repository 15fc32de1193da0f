"""NetworkService: users' desired state (Network documents), their allocations, and why.

Writes (Apply, DeleteNetwork) read the record from the store and write it back conditioned
on the resource_version they read, retrying the read-modify-write on Conflict
(`store.retry`), so two clients applying at once never lose an update. What they write goes
through to the view at once, so this replica's loops and watches see it before the next
refresh.

Apply owns spec, labels and annotations; status belongs to the network loop and server-owned
metadata (uid, generation, creation, finalizers, deletion) to the server, so none of those
is ever taken from the user's document. `generation` moves only when spec changes, which is
what the loop compares `status.observed_generation` with.

Reads of one Network (GetNetwork, ListNetworks) go to the store: a client that just wrote
through another replica must see its write. Watches, allocation listings and placement
explanations are answered from the view.
"""

from __future__ import annotations

import base64
import binascii
import logging
from collections.abc import AsyncIterator
from typing import Any

from grpc import aio

from api import labels, manifest
from api.dcnr.v1 import common_pb2, network_pb2, network_pb2_grpc
from api.resources import allocation as allocation_model
from api.resources import event as event_model
from api.resources import meta
from api.resources import network as net_model
from controller import config as config_mod
from controller import errors as faults
from controller.runtime import clock as clock_mod
from controller.services import placement_explain, rpc
from controller.state import view as view_mod
from reconcilers import network as network_loop
from scheduler import config as scheduler_config_mod
from store import base, errors, retry

log = logging.getLogger("dcnr.networks")

Network = net_model.Network
Allocation = allocation_model.Allocation

#: Page size when the client gives none, and the largest it may ask for.
DEFAULT_LIMIT = base.DEFAULT_PAGE_SIZE
MAX_LIMIT = 1000
#: Records who applied the document last (the request's field_manager).
FIELD_MANAGER_ANNOTATION = "dcnr.io/last-applied-by"

CREATED = network_pb2.APPLY_OUTCOME_CREATED
CONFIGURED = network_pb2.APPLY_OUTCOME_CONFIGURED
UNCHANGED = network_pb2.APPLY_OUTCOME_UNCHANGED


def document(resource: meta.Resource) -> common_pb2.ResourceDocument:
    return common_pb2.ResourceDocument(kind=resource.KIND, json=resource.to_json().encode())


def not_found(name: str) -> faults.NotFound:
    return faults.NotFound(f"network {name!r} not found")


class NetworkService(network_pb2_grpc.NetworkServiceServicer):
    def __init__(
        self,
        *,
        store: base.Store,
        view: view_mod.View,
        clock: clock_mod.Clock,
        config: config_mod.ControlPlaneConfig,
        replica_id: str,
        scheduler_config: scheduler_config_mod.Config | None = None,
    ) -> None:
        self._store = store
        self._view = view
        self._clock = clock
        self._config = config
        self._replica_id = replica_id
        self._scheduler_config = scheduler_config or scheduler_config_mod.DEFAULT

    # -- Apply ------------------------------------------------------------------------------

    @rpc.handler
    async def Apply(
        self, request: network_pb2.ApplyRequest, context: aio.ServicerContext[Any, Any]
    ) -> network_pb2.ApplyResponse:
        wanted = _parse(request.document)
        expected_rv = wanted.metadata.resource_version

        async def attempt() -> network_pb2.ApplyResponse:
            try:
                current: Network | None = await self._store.get(Network, wanted.name)
            except errors.NotFound:
                current = None
            outcome, result = _applied(current, wanted, request.field_manager)
            if expected_rv and (
                current is None or current.metadata.resource_version != expected_rv
            ):
                stored = "none" if current is None else current.metadata.resource_version
                raise faults.Conflict(
                    f"metadata.resourceVersion: {expected_rv} given, the stored network "
                    f"{wanted.name!r} is at {stored}; re-read and apply again",
                )
            if outcome != UNCHANGED and not request.dry_run:
                if current is None:
                    result = await self._store.create(result)
                else:
                    result = await self._store.update(result)
                self._view.apply_written([result])
            return network_pb2.ApplyResponse(
                header=rpc.response_header(request.header, self._replica_id),
                document=document(result),
                outcome=outcome,
            )

        # Conflict, AlreadyExists, NotFound: someone else wrote it meanwhile; read again and
        # redo. Exhausted answers ABORTED (rpc's table).
        return await retry.retry_on_conflict(
            attempt,
            what=f"apply network {wanted.name!r}",
            also=(errors.AlreadyExists, errors.NotFound),
        )

    # -- reads ------------------------------------------------------------------------------

    @rpc.handler
    async def GetNetwork(
        self, request: network_pb2.GetNetworkRequest, context: aio.ServicerContext[Any, Any]
    ) -> network_pb2.GetNetworkResponse:
        found = await self._get(request.name)
        return network_pb2.GetNetworkResponse(
            header=rpc.response_header(request.header, self._replica_id),
            document=document(found),
        )

    @rpc.handler
    async def ListNetworks(
        self, request: network_pb2.ListNetworksRequest, context: aio.ServicerContext[Any, Any]
    ) -> network_pb2.ListNetworksResponse:
        selector = _selector(request.label_selector)
        limit = _limit(request.limit)
        items: list[Network] = []
        token: str | None = request.continue_token or None
        # Ask the store only for what is still missing, so a page never exceeds `limit`
        # and the store's token resumes exactly after the last record looked at.
        while len(items) < limit:
            page = await self._store.list(Network, limit=limit - len(items), continue_token=token)
            items += [n for n in page.items if selector.matches(n.metadata.labels)]
            token = page.continue_token
            if token is None:
                break
        return network_pb2.ListNetworksResponse(
            header=rpc.response_header(request.header, self._replica_id),
            items=[document(n) for n in items],
            continue_token=token or "",
        )

    # -- DeleteNetwork ----------------------------------------------------------------------

    @rpc.handler
    async def DeleteNetwork(
        self, request: network_pb2.DeleteNetworkRequest, context: aio.ServicerContext[Any, Any]
    ) -> network_pb2.DeleteNetworkResponse:
        """Marks the Network deleted; the network loop stops its allocations, then removes it.

        Every propagation policy waits for the allocations: an allocation left behind would
        hold PNode capacity that no Network accounts for. A Network without finalizers has
        nothing to wait for and is deleted at once.
        """

        async def attempt() -> network_pb2.DeleteNetworkResponse:
            current = await self._get(request.name)
            if request.HasField("expected_resource_version"):
                stored = current.metadata.resource_version
                if stored != request.expected_resource_version:
                    raise faults.Conflict(
                        f"expected_resource_version: {request.expected_resource_version} "
                        f"given, the stored network {request.name!r} is at {stored}",
                    )
            marked = current.model_copy(deep=True)
            if marked.metadata.deletion_timestamp is None:
                marked.metadata.deletion_timestamp = self._clock.now()
            if request.dry_run or current.metadata.deletion_timestamp is not None:
                return self._deleted(request, marked)
            try:
                if not current.metadata.finalizers:
                    await self._store.delete(
                        Network,
                        current.name,
                        resource_version=current.metadata.resource_version,
                        uid=current.metadata.uid,
                    )
                    self._view.apply_deleted(Network, current.name)
                    return self._deleted(request, marked)
                written = await self._store.update(marked)
            except errors.NotFound:
                raise not_found(request.name) from None
            self._view.apply_written([written])
            return self._deleted(request, written)

        return await retry.retry_on_conflict(attempt, what=f"delete network {request.name!r}")

    def _deleted(
        self, request: network_pb2.DeleteNetworkRequest, last: Network
    ) -> network_pb2.DeleteNetworkResponse:
        return network_pb2.DeleteNetworkResponse(
            header=rpc.response_header(request.header, self._replica_id), document=document(last)
        )

    # -- WatchNetworks ----------------------------------------------------------------------

    async def WatchNetworks(
        self, request: network_pb2.WatchNetworksRequest, context: aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[network_pb2.WatchNetworksResponse]:
        try:
            rpc.check_header(request.header)
            selector = _selector(request.label_selector)
            if request.resource_version < 0:
                raise faults.FieldInvalid(
                    "resource_version", request.resource_version, "must be >= 0"
                )
        except Exception as exc:
            await rpc.abort(context, exc)
            return

        def matching() -> dict[str, Network]:
            return {
                name: net
                for name, net in self._view.networks.items()
                if (not request.name or name == request.name)
                and selector.matches(net.metadata.labels)
            }

        changes = self._view.changed
        seen = changes.value
        sent = matching()
        if request.name and request.resource_version:
            net = sent.get(request.name)
            if net is not None and net.metadata.resource_version > request.resource_version:
                yield _event(common_pb2.WATCH_EVENT_TYPE_MODIFIED, net)
        else:
            for name in sorted(sent):
                yield _event(common_pb2.WATCH_EVENT_TYPE_ADDED, sent[name])
            yield _bookmark(sent.get(request.name) if request.name else None)
        while True:
            seen = await changes.wait_past(seen)
            current = matching()
            for name in sorted(sent.keys() | current.keys()):
                old, new = sent.get(name), current.get(name)
                if new is None:
                    assert old is not None
                    yield _event(common_pb2.WATCH_EVENT_TYPE_DELETED, old)
                elif old is None:
                    yield _event(common_pb2.WATCH_EVENT_TYPE_ADDED, new)
                elif (old.metadata.uid, old.metadata.resource_version) != (
                    new.metadata.uid,
                    new.metadata.resource_version,
                ):
                    yield _event(common_pb2.WATCH_EVENT_TYPE_MODIFIED, new)
            sent = current

    # -- allocations and explanations -------------------------------------------------------

    @rpc.handler
    async def ListAllocations(
        self, request: network_pb2.ListAllocationsRequest, context: aio.ServicerContext[Any, Any]
    ) -> network_pb2.ListAllocationsResponse:
        limit = _limit(request.limit)
        after = _decode_token(request.continue_token)
        if request.network:
            found = self._view.allocations_of(request.network)
            if request.pnode:
                found = [a for a in found if a.spec.pnode == request.pnode]
        elif request.pnode:
            found = self._view.allocations_on(request.pnode)
        else:
            found = [self._view.allocations[n] for n in sorted(self._view.allocations)]
        found = [a for a in found if after is None or a.name > after]
        page, rest = found[:limit], found[limit:]
        token = _encode_token(page[-1].name) if rest else ""
        return network_pb2.ListAllocationsResponse(
            header=rpc.response_header(request.header, self._replica_id),
            items=[document(a) for a in page],
            continue_token=token,
        )

    @rpc.handler
    async def ExplainPlacement(
        self, request: network_pb2.ExplainPlacementRequest, context: aio.ServicerContext[Any, Any]
    ) -> network_pb2.ExplainPlacementResponse:
        if not request.network:
            raise faults.FieldInvalid("network", request.network, "must name a network")
        if not request.vnode:
            raise faults.FieldInvalid("vnode", request.vnode, "must name a vnode of the network")
        net = self._view.networks.get(request.network)
        if net is None:
            raise not_found(request.network)
        response = placement_explain.explain_slot(
            net,
            request.vnode,
            request.replica,
            pnodes=list(self._view.pnodes.values()),
            allocations=self._view.allocations_of(request.network),
            config=self._scheduler_config,
        )
        response.header.CopyFrom(rpc.response_header(request.header, self._replica_id))
        return response

    @rpc.handler
    async def ListEvents(
        self, request: network_pb2.ListEventsRequest, context: aio.ServicerContext[Any, Any]
    ) -> network_pb2.ListEventsResponse:
        limit = _limit(request.limit)
        index = None
        if request.involved_object:
            index = ("object", _involved(request.involved_object))
        try:
            page = await self._store.list(
                event_model.Event,
                index=index,
                limit=limit,
                continue_token=request.continue_token or None,
            )
        except errors.InvalidRequest:
            raise faults.FieldInvalid(
                "continue_token", request.continue_token[:40], "must be a previous page's"
            ) from None
        return network_pb2.ListEventsResponse(
            header=rpc.response_header(request.header, self._replica_id),
            items=[document(e) for e in page.items],
            continue_token=page.continue_token or "",
        )

    # -- shared -----------------------------------------------------------------------------

    async def _get(self, name: str) -> Network:
        if not name:
            raise faults.FieldInvalid("name", name, "must name a network")
        try:
            return await self._store.get(Network, name)
        except errors.NotFound:
            raise not_found(name) from None


# -- Apply, pure ---------------------------------------------------------------------------


def _parse(doc: common_pb2.ResourceDocument) -> Network:
    """The Network of an Apply document, with every manifest check (ManifestError →
    INVALID_ARGUMENT naming each field)."""
    try:
        # The manifest reader's limits (size, nesting) are checked before json.loads
        # recurses: a 100,000-deep array must be a client error, not a RecursionError.
        body = manifest.read_json(doc.json)
    except manifest.ManifestError as exc:
        raise faults.InvalidArgument(f"document.json: {exc}") from None
    if doc.kind and isinstance(body, dict) and body.get("kind") != doc.kind:
        raise faults.FieldInvalid(
            "document.kind", doc.kind, f"must equal the JSON's kind {body.get('kind')!r}"
        )
    parsed = manifest.parse_object(body, source="document")
    if not isinstance(parsed, Network):
        raise faults.FieldInvalid("document.kind", parsed.KIND, "Apply takes kind 'Network'")
    return parsed


def _applied(
    current: Network | None, wanted: Network, field_manager: str
) -> tuple[network_pb2.ApplyOutcome.ValueType, Network]:
    """The outcome, and the record to write (or, for UNCHANGED, the stored one)."""
    annotations = dict(wanted.metadata.annotations)
    annotations.pop(FIELD_MANAGER_ANNOTATION, None)
    if current is None:
        if field_manager:
            annotations[FIELD_MANAGER_ANNOTATION] = field_manager
        created = Network(
            metadata=meta.ObjectMeta(
                name=wanted.name,
                labels=dict(wanted.metadata.labels),
                annotations=annotations,
                finalizers=[network_loop.FINALIZER],
                generation=1,
            ),
            spec=wanted.spec.model_copy(deep=True),
        )
        return CREATED, created
    if current.metadata.deletion_timestamp is not None:
        raise faults.FailedPrecondition(
            f"network {current.name!r} is being deleted (deletionTimestamp "
            f"{current.metadata.deletion_timestamp.isoformat()}); apply again once it is gone",
            reason="Terminating",
        )
    stored_annotations = dict(current.metadata.annotations)
    last_manager = stored_annotations.pop(FIELD_MANAGER_ANNOTATION, None)
    spec_changed = _dump(current.spec) != _dump(wanted.spec)
    if (
        not spec_changed
        and current.metadata.labels == wanted.metadata.labels
        and stored_annotations == annotations
    ):
        return UNCHANGED, current
    updated = current.model_copy(deep=True)
    updated.spec = wanted.spec.model_copy(deep=True)
    updated.metadata.labels = dict(wanted.metadata.labels)
    manager = field_manager or last_manager
    if manager:
        annotations[FIELD_MANAGER_ANNOTATION] = manager
    updated.metadata.annotations = annotations
    if spec_changed:
        updated.metadata.generation = current.metadata.generation + 1
    return CONFIGURED, updated


def _dump(spec: net_model.NetworkSpec) -> Any:
    return spec.model_dump(mode="json", by_alias=True)


# -- small parsers -------------------------------------------------------------------------


def _selector(text: str) -> labels.Selector:
    try:
        return labels.parse_selector(text)
    except labels.SelectorError as exc:
        raise faults.FieldInvalid("label_selector", text, str(exc)) from None


def _involved(text: str) -> str:
    """ "Kind/name" as the events' index holds it; FieldInvalid naming the form otherwise."""
    kind, _, name = text.partition("/")
    try:
        return event_model.ObjectReference(kind=kind, name=name).key()
    except ValueError:  # pydantic's ValidationError is one
        raise faults.FieldInvalid(
            "involved_object", text, 'must be "Kind/name", e.g. "Network/digits"'
        ) from None


def _limit(limit: int) -> int:
    if limit < 0 or limit > MAX_LIMIT:
        raise faults.FieldInvalid(
            "limit", limit, f"must be between 0 (server default) and {MAX_LIMIT}"
        )
    return limit or DEFAULT_LIMIT


def _encode_token(name: str) -> str:
    return base64.urlsafe_b64encode(name.encode()).decode()


def _decode_token(token: str) -> str | None:
    if not token:
        return None
    try:
        return base64.urlsafe_b64decode(token.encode()).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise faults.FieldInvalid(
            "continue_token", token[:40], "must be the token of the previous page"
        ) from None


def _event(
    kind: common_pb2.WatchEventType.ValueType, net: Network
) -> network_pb2.WatchNetworksResponse:
    return network_pb2.WatchNetworksResponse(
        event=common_pb2.WatchEvent(
            type=kind, document=document(net), resource_version=net.metadata.resource_version
        )
    )


def _bookmark(net: Network | None) -> network_pb2.WatchNetworksResponse:
    rv = 0 if net is None else net.metadata.resource_version
    return network_pb2.WatchNetworksResponse(
        event=common_pb2.WatchEvent(type=common_pb2.WATCH_EVENT_TYPE_BOOKMARK, resource_version=rv)
    )
