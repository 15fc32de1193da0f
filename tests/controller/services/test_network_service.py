"""NetworkService over a real gRPC socket, with a real SQLite store and view."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc import aio

from api import manifest, messages
from api.dcnr.v1 import common_pb2, network_pb2, network_pb2_grpc
from api.resources import network as net_model
from controller.runtime import clock as clocks
from controller.services import network_service
from controller.state import view as view_mod
from reconcilers import network as network_loop
from store import errors, retry, sqlite
from tests.controller.state import test_view as records
from tests.store import records as store_records

Network = net_model.Network


class Served:
    def __init__(self, store: sqlite.SqliteStore, clock: clocks.FakeClock) -> None:
        self.store = store
        self.clock = clock
        self.view = view_mod.View(store, clock, config=records.CONFIG)
        self.server = aio.server()
        service = network_service.NetworkService(
            store=store, view=self.view, clock=clock, config=records.CONFIG, replica_id="r1"
        )
        network_pb2_grpc.add_NetworkServiceServicer_to_server(service, self.server)
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.channel = aio.insecure_channel(f"127.0.0.1:{self.port}")
        self.stub = network_pb2_grpc.NetworkServiceStub(self.channel)

    async def apply(self, body: dict[str, Any], **fields: Any) -> network_pb2.ApplyResponse:
        doc = common_pb2.ResourceDocument(kind=body.get("kind", ""), json=json.dumps(body).encode())
        return await self.stub.Apply(network_pb2.ApplyRequest(document=doc, **fields), timeout=10)

    async def stored(self, name: str) -> Network:
        return await self.store.get(Network, name)


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[Served]:
    store = await sqlite.SqliteStore.open(tmp_path / "state.db")
    it = Served(store, clocks.FakeClock())
    await it.server.start()
    try:
        yield it
    finally:
        await it.channel.close(None)
        await it.server.stop(None)
        await store.close()


def manifest_of(
    name: str = "mnist",
    *,
    vnodes: tuple[str, ...] = ("input", "out"),
    labels: dict[str, str] | None = None,
    cpu: str = "100m",
    **extra: Any,
) -> dict[str, Any]:
    specs = [
        {
            "name": v,
            "kind": "dense",
            "inputs": [vnodes[i - 1]] if i else [],
            "params": {"units": 4},
            "resources": {"cpu": cpu},
        }
        for i, v in enumerate(vnodes)
    ]
    return {
        "apiVersion": "dcnr.io/v1",
        "kind": "Network",
        "metadata": {"name": name, "labels": labels or {}},
        "spec": {"vnodes": specs},
        **extra,
    }


def loaded(doc: common_pb2.ResourceDocument) -> dict[str, Any]:
    assert doc.kind
    body: dict[str, Any] = json.loads(doc.json)
    assert body["kind"] == doc.kind
    return body


async def failure(awaitable) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await awaitable
    return caught.value


# -- Apply ---------------------------------------------------------------------------------


async def test_apply_creates_then_configures_then_leaves_unchanged(served) -> None:
    created = await served.apply(manifest_of(), field_manager="dcnctl")
    assert created.outcome == network_pb2.APPLY_OUTCOME_CREATED
    body = loaded(created.document)
    assert body["metadata"]["finalizers"] == [network_loop.FINALIZER]
    assert body["metadata"]["generation"] == 1
    assert body["metadata"]["annotations"] == {"dcnr.io/last-applied-by": "dcnctl"}
    assert "mnist" in served.view.networks, "not written through to the view"

    again = await served.apply(manifest_of(), field_manager="dcnctl")
    assert again.outcome == network_pb2.APPLY_OUTCOME_UNCHANGED
    assert (await served.stored("mnist")).metadata.resource_version == 1, "wrote anyway"

    relabelled = await served.apply(manifest_of(labels={"team": "vision"}))
    assert relabelled.outcome == network_pb2.APPLY_OUTCOME_CONFIGURED
    stored = await served.stored("mnist")
    assert stored.metadata.labels == {"team": "vision"}
    assert stored.metadata.generation == 1, "labels are not spec"

    resized = await served.apply(manifest_of(labels={"team": "vision"}, cpu="2"))
    assert resized.outcome == network_pb2.APPLY_OUTCOME_CONFIGURED
    stored = await served.stored("mnist")
    assert stored.metadata.generation == 2
    assert stored.spec.vnodes[0].resources.cpu == 2000
    assert stored.metadata.finalizers == [network_loop.FINALIZER]
    assert served.view.networks["mnist"].metadata.resource_version == 3


async def test_apply_never_takes_status_or_server_owned_metadata_from_the_user(served) -> None:
    await served.apply(manifest_of())
    current = await served.stored("mnist")
    current.status.phase, current.status.observed_generation = "Ready", 1
    await served.store.update(current)  # as the network loop writes it

    forged = manifest_of(cpu="3", status={"phase": "Degraded", "readySlots": 99})
    forged["metadata"].update(uid="forged", generation=40, finalizers=[])
    reply = await served.apply(forged)
    assert reply.outcome == network_pb2.APPLY_OUTCOME_CONFIGURED
    stored = await served.stored("mnist")
    assert stored.status.phase == "Ready"
    assert stored.status.ready_slots == 0
    assert stored.metadata.uid == current.metadata.uid
    assert stored.metadata.generation == 2
    assert stored.metadata.finalizers == [network_loop.FINALIZER]

    fresh = await served.apply(manifest_of("other", status={"phase": "Ready"}))
    assert loaded(fresh.document)["status"]["phase"] == "Pending"


async def test_dry_run_computes_the_outcome_and_writes_nothing(served) -> None:
    reply = await served.apply(manifest_of(), dry_run=True)
    assert reply.outcome == network_pb2.APPLY_OUTCOME_CREATED
    assert loaded(reply.document)["metadata"]["finalizers"] == [network_loop.FINALIZER]
    with pytest.raises(errors.NotFound):
        await served.stored("mnist")
    assert "mnist" not in served.view.networks

    await served.apply(manifest_of())
    reply = await served.apply(manifest_of(cpu="2"), dry_run=True)
    assert reply.outcome == network_pb2.APPLY_OUTCOME_CONFIGURED
    assert loaded(reply.document)["metadata"]["generation"] == 2
    stored = await served.stored("mnist")
    assert (stored.metadata.resource_version, stored.metadata.generation) == (1, 1)


async def test_a_bad_manifest_is_refused_naming_the_field(served) -> None:
    body = manifest_of(vnodes=("input", "out"))
    body["spec"]["vnodes"][1]["inputs"] = ["fc9"]
    with pytest.raises(manifest.ManifestError) as expected:
        manifest.parse_object(body, source="document")
    error = await failure(served.apply(body))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == str(expected.value)
    assert (
        error.details()
        == 'document: spec.vnodes[1].inputs[0]: unknown vnode "fc9" (known: input, out)'
    )


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"kind": "dens"}, 'spec.vnodes[1].kind: unknown kind "dens" (did you mean "dense"?;'),
        ({"params": {"unitz": 32}}, 'spec.vnodes[1].params.unitz: unknown parameter (did you'),
        ({"params": {"units": 0}}, "spec.vnodes[1].params.units: must be an integer >= 1"),
        ({"params": {"units": 32.5}}, "spec.vnodes[1].params.units: must be an integer >= 1"),
        ({"params": {"units": 2**62}}, "spec.vnodes[1].params.units: must be an integer >= 1"),
    ],
)
async def test_a_vnode_that_could_never_start_is_refused_at_apply(
    served, change: dict[str, Any], message: str
) -> None:
    body = manifest_of(vnodes=("input", "out"))
    body["spec"]["vnodes"][1].update(change)
    error = await failure(served.apply(body))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (error.details() or "").startswith(f"document: {message}")
    with pytest.raises(errors.NotFound):
        await served.stored("mnist")


async def test_apply_refuses_kinds_other_than_network(served) -> None:
    pnode_doc = {
        "apiVersion": "dcnr.io/v1",
        "kind": "PNode",
        "metadata": {"name": "p1"},
        "spec": {"address": "p1:7000"},
    }
    error = await failure(served.apply(pnode_doc))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "kind: PNode records are written by the system" in (error.details() or "")

    job_doc = {
        "apiVersion": "dcnr.io/v1",
        "kind": "Job",
        "metadata": {"name": "j"},
        "spec": {"network": "mnist", "type": "train"},
    }
    error = await failure(served.apply(job_doc))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "kind" in (error.details() or "")

    doc = common_pb2.ResourceDocument(kind="Network", json=b"{not json")
    error = await failure(served.stub.Apply(network_pb2.ApplyRequest(document=doc)))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (error.details() or "").startswith("document.json:")


async def test_apply_conditioned_on_a_stale_resource_version_is_aborted(served) -> None:
    await served.apply(manifest_of())
    await served.apply(manifest_of(cpu="2"))
    stale = manifest_of(cpu="3")
    stale["metadata"]["resourceVersion"] = 1
    error = await failure(served.apply(stale))
    assert error.code() == grpc.StatusCode.ABORTED
    assert "metadata.resourceVersion: 1 given" in (error.details() or "")
    stale["metadata"]["resourceVersion"] = 2
    assert (await served.apply(stale)).outcome == network_pb2.APPLY_OUTCOME_CONFIGURED


async def test_apply_to_a_network_being_deleted_fails_its_precondition(served) -> None:
    await served.apply(manifest_of())
    await served.stub.DeleteNetwork(network_pb2.DeleteNetworkRequest(name="mnist"))
    error = await failure(served.apply(manifest_of(cpu="2")))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "network 'mnist' is being deleted" in (error.details() or "")


async def test_concurrent_applies_lose_no_update(served) -> None:
    """Every Conflict means another apply got through, so with no more appliers than
    attempts every one of them succeeds, each on top of the others."""
    assert retry.ATTEMPTS >= 6
    await served.apply(manifest_of())
    replies = await asyncio.gather(
        *(served.apply(manifest_of(labels={f"k{i}": "v"}, cpu=f"{i + 1}")) for i in range(6))
    )
    assert all(r.outcome == network_pb2.APPLY_OUTCOME_CONFIGURED for r in replies)
    stored = await served.stored("mnist")
    assert stored.metadata.resource_version == 7  # every apply wrote once
    assert stored.metadata.generation == 7


# -- Get and List --------------------------------------------------------------------------


async def test_get_returns_the_stored_document_and_names_what_is_missing(served) -> None:
    await served.apply(manifest_of())
    reply = await served.stub.GetNetwork(network_pb2.GetNetworkRequest(name="mnist"))
    assert loaded(reply.document)["metadata"]["name"] == "mnist"
    assert reply.header.served_by == "r1"
    error = await failure(served.stub.GetNetwork(network_pb2.GetNetworkRequest(name="nope")))
    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert error.details() == "network 'nope' not found"
    error = await failure(served.stub.GetNetwork(network_pb2.GetNetworkRequest(name="")))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_list_filters_by_selector_and_pages(served) -> None:
    for i in range(7):
        await served.apply(manifest_of(f"net-{i}", labels={"team": "a" if i % 2 else "b"}))
    names: list[str] = []
    token = ""
    pages = 0
    while True:
        reply = await served.stub.ListNetworks(
            network_pb2.ListNetworksRequest(label_selector="team=b", limit=2, continue_token=token)
        )
        assert len(reply.items) <= 2
        names += [loaded(d)["metadata"]["name"] for d in reply.items]
        pages += 1
        token = reply.continue_token
        if not token:
            break
    assert sorted(names) == ["net-0", "net-2", "net-4", "net-6"]
    assert pages >= 2
    everything = await served.stub.ListNetworks(network_pb2.ListNetworksRequest())
    assert len(everything.items) == 7
    assert everything.continue_token == ""


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"label_selector": "team in (a"}, "label_selector"),
        ({"limit": -1}, "limit"),
        ({"continue_token": "garbage"}, "continue_token"),
    ],
)
async def test_list_refuses_bad_arguments_naming_them(served, fields, named) -> None:
    await served.apply(manifest_of())
    error = await failure(served.stub.ListNetworks(network_pb2.ListNetworksRequest(**fields)))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert named in (error.details() or "")


# -- Delete --------------------------------------------------------------------------------


async def finish_deletion(served: Served, name: str) -> None:
    """What the network loop does once no allocation is left: drop its finalizer, delete."""
    network = await served.stored(name)
    assert network.metadata.deletion_timestamp is not None
    await served.store.delete(
        Network, name, resource_version=network.metadata.resource_version, uid=network.metadata.uid
    )
    served.view.apply_deleted(Network, name)


async def test_delete_marks_the_network_and_the_loop_removes_it(served) -> None:
    await served.apply(manifest_of())
    dry = await served.stub.DeleteNetwork(
        network_pb2.DeleteNetworkRequest(name="mnist", dry_run=True)
    )
    assert "deletionTimestamp" in loaded(dry.document)["metadata"]
    assert (await served.stored("mnist")).metadata.deletion_timestamp is None

    reply = await served.stub.DeleteNetwork(network_pb2.DeleteNetworkRequest(name="mnist"))
    body = loaded(reply.document)
    assert body["metadata"]["deletionTimestamp"].startswith("2030-01-01")
    stored = await served.stored("mnist")
    assert stored.metadata.deletion_timestamp == served.clock.now()
    assert served.view.networks["mnist"].metadata.deletion_timestamp is not None
    again = await served.stub.DeleteNetwork(network_pb2.DeleteNetworkRequest(name="mnist"))
    assert loaded(again.document)["metadata"]["resourceVersion"] == 2, "deleting twice wrote"

    await finish_deletion(served, "mnist")
    error = await failure(served.stub.GetNetwork(network_pb2.GetNetworkRequest(name="mnist")))
    assert error.code() == grpc.StatusCode.NOT_FOUND


async def test_delete_preconditions_and_missing_networks(served) -> None:
    await served.apply(manifest_of())
    error = await failure(
        served.stub.DeleteNetwork(
            network_pb2.DeleteNetworkRequest(name="mnist", expected_resource_version=5)
        )
    )
    assert error.code() == grpc.StatusCode.ABORTED
    assert "expected_resource_version: 5" in (error.details() or "")
    ok = await served.stub.DeleteNetwork(
        network_pb2.DeleteNetworkRequest(name="mnist", expected_resource_version=1)
    )
    assert "deletionTimestamp" in loaded(ok.document)["metadata"]
    error = await failure(served.stub.DeleteNetwork(network_pb2.DeleteNetworkRequest(name="nope")))
    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert "network 'nope' not found" in (error.details() or "")


async def test_a_network_without_finalizers_is_deleted_at_once(served) -> None:
    bare = records.network_record("bare")
    bare.metadata.finalizers = []
    served.view.apply_written([await served.store.create(bare)])
    await served.stub.DeleteNetwork(network_pb2.DeleteNetworkRequest(name="bare"))
    with pytest.raises(errors.NotFound):
        await served.stored("bare")
    assert "bare" not in served.view.networks


# -- WatchNetworks -------------------------------------------------------------------------


async def next_event(call) -> tuple[str, str, int]:
    message = await asyncio.wait_for(call.read(), timeout=10)
    assert isinstance(message, network_pb2.WatchNetworksResponse), "the stream ended"
    event = message.event
    name = loaded(event.document)["metadata"]["name"] if event.document.json else ""
    return (
        common_pb2.WatchEventType.Name(event.type).removeprefix("WATCH_EVENT_TYPE_"),
        name,
        (event.resource_version),
    )


async def test_watch_replays_then_streams_changes(served) -> None:
    await served.apply(manifest_of("a"))
    await served.apply(manifest_of("b", labels={"team": "x"}))
    call = served.stub.WatchNetworks(network_pb2.WatchNetworksRequest())
    assert await next_event(call) == ("ADDED", "a", 1)
    assert await next_event(call) == ("ADDED", "b", 1)
    assert await next_event(call) == ("BOOKMARK", "", 0)

    await served.apply(manifest_of("a", cpu="2"))
    assert await next_event(call) == ("MODIFIED", "a", 2)
    await served.apply(manifest_of("c"))
    assert await next_event(call) == ("ADDED", "c", 1)
    await served.stub.DeleteNetwork(network_pb2.DeleteNetworkRequest(name="b"))
    assert await next_event(call) == ("MODIFIED", "b", 2)
    await finish_deletion(served, "b")
    assert await next_event(call) == ("DELETED", "b", 2)
    call.cancel()


async def test_watch_of_one_network_by_name_and_selector(served) -> None:
    await served.apply(manifest_of("a", labels={"team": "x"}))
    await served.apply(manifest_of("a", labels={"team": "x"}, cpu="2"))
    by_name = served.stub.WatchNetworks(
        network_pb2.WatchNetworksRequest(name="a", resource_version=1)
    )
    assert await next_event(by_name) == ("MODIFIED", "a", 2)
    selected = served.stub.WatchNetworks(network_pb2.WatchNetworksRequest(label_selector="team=x"))
    assert await next_event(selected) == ("ADDED", "a", 2)
    assert await next_event(selected) == ("BOOKMARK", "", 0)

    await served.apply(manifest_of("other"))  # neither watch sees it
    await served.apply(manifest_of("a", labels={"team": "y"}, cpu="2"))
    assert await next_event(by_name) == ("MODIFIED", "a", 3)
    assert await next_event(selected) == ("DELETED", "a", 2)  # no longer matches
    by_name.cancel()
    selected.cancel()

    bad = served.stub.WatchNetworks(network_pb2.WatchNetworksRequest(label_selector="a in ("))
    error = await failure(bad.read())
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "label_selector" in (error.details() or "")


# -- allocations and placement explanations ------------------------------------------------


async def test_list_allocations_by_network_and_by_pnode_with_pages(served) -> None:
    written = await records.create_all(
        served.store,
        records.allocation_record("mnist", "input", 0, "p1"),
        records.allocation_record("mnist", "input", 1, "p2"),
        records.allocation_record("mnist", "out", 0, "p1"),
        records.allocation_record("other", "input", 0, "p1"),
    )
    served.view.apply_written(written)

    async def names(**fields: Any) -> list[str]:
        found: list[str] = []
        token = ""
        while True:
            reply = await served.stub.ListAllocations(
                network_pb2.ListAllocationsRequest(limit=1, continue_token=token, **fields)
            )
            found += [loaded(d)["metadata"]["name"] for d in reply.items]
            assert all(d.kind == "Allocation" for d in reply.items)
            token = reply.continue_token
            if not token:
                return found

    assert await names(network="mnist") == ["mnist.input.0", "mnist.input.1", "mnist.out.0"]
    assert await names(pnode="p1") == ["mnist.input.0", "mnist.out.0", "other.input.0"]
    assert await names(network="mnist", pnode="p1") == ["mnist.input.0", "mnist.out.0"]
    assert len(await names()) == 4


async def test_explain_re_derives_the_decision_with_every_filter(served) -> None:
    now = served.clock.now()
    big = records.pnode_record("big", cpu=8000)
    small = records.pnode_record("small", cpu=500)
    down = records.pnode_record("down", phase="NotReady", cpu=8000)
    await records.create_all(served.store, big, small, down)
    await served.apply(manifest_of(cpu="2"))
    placed = records.allocation_record("mnist", "input", 0, "big")
    placed.spec.resources.cpu = 2000
    await records.create_all(served.store, placed, records.lease_record("big", renewed=now))
    await served.view.refresh()

    reply = await served.stub.ExplainPlacement(
        network_pb2.ExplainPlacementRequest(network="mnist", vnode="input", replica=0)
    )
    assert reply.placed_on == "big"
    assert "Re-derived at this moment" in reply.summary
    assert "would place on 'big'" in reply.summary
    assert {(r.reason, r.count) for r in reply.reasons} == {
        ("insufficient cpu", 1),
        ("not ready", 1),
    }
    rows = {row.pnode_id: row for row in reply.pnodes}
    assert next(iter(rows)) == "big", "best first, rejected last"
    assert rows["big"].feasible
    assert rows["big"].sampled
    assert rows["big"].scores
    assert {s.scorer for s in rows["big"].scores} >= {"least_allocated", "reliability"}
    failed = {f.filter: f.reason for f in rows["down"].filters if not f.passed}
    assert failed == {"ready": "not ready"}
    assert not rows["small"].feasible
    assert {f.filter for f in rows["small"].filters if not f.passed} == {"cpu_fits"}

    unschedulable = await served.stub.ExplainPlacement(
        network_pb2.ExplainPlacementRequest(network="mnist", vnode="out", replica=0)
    )
    assert unschedulable.placed_on == ""
    # `big` has 6 of 8 cpus free: `out` (2 cpus) still fits there.
    assert "would place on 'big'" in unschedulable.summary


@pytest.mark.parametrize(
    ("fields", "code", "words"),
    [
        ({"network": "nope", "vnode": "a"}, grpc.StatusCode.NOT_FOUND, "network 'nope'"),
        ({"network": "mnist", "vnode": "fc9"}, grpc.StatusCode.NOT_FOUND, "no vnode 'fc9'"),
        (
            {"network": "mnist", "vnode": "out", "replica": 1},
            grpc.StatusCode.INVALID_ARGUMENT,
            "replica",
        ),
        ({"network": "", "vnode": "out"}, grpc.StatusCode.INVALID_ARGUMENT, "network"),
    ],
)
async def test_explain_errors(served, fields, code, words) -> None:
    await served.apply(manifest_of())
    error = await failure(
        served.stub.ExplainPlacement(network_pb2.ExplainPlacementRequest(**fields))
    )
    assert error.code() == code
    assert words in (error.details() or "")


async def test_explain_of_an_unschedulable_slot_counts_reasons(served) -> None:
    await records.create_all(served.store, records.pnode_record("p1", cpu=500))
    await served.apply(manifest_of(cpu="4"))
    await served.view.refresh()
    reply = await served.stub.ExplainPlacement(
        network_pb2.ExplainPlacementRequest(network="mnist", vnode="input")
    )
    assert "0/1 pnodes available: 1 insufficient cpu" in reply.summary
    assert [(r.reason, r.count) for r in reply.reasons] == [("insufficient cpu", 1)]
    assert reply.seed != 0


async def test_an_error_is_one_bounded_line_whatever_the_input(served) -> None:
    huge = "n" * 10_000
    error = await failure(served.stub.GetNetwork(network_pb2.GetNetworkRequest(name=huge)))
    details = error.details() or ""
    assert "\n" not in details
    assert len(details) <= messages.MAX_LINE_CHARS
    assert "characters left out" in details
    assert details.endswith("not found")


# -- ListEvents ------------------------------------------------------------------------------


async def test_list_events_by_object_or_all_in_pages_and_refuses_a_malformed_object(
    served,
) -> None:
    now = datetime.now(UTC)  # the store's own clock judges expiry
    for obj, kind, reason in [("digits", "Network", "Placed"), ("digits", "Network", "Stopped"),
                              ("p1", "PNode", "Fenced"), ("digits", "Job", "Started")]:  # fmt: skip
        await served.store.create(
            store_records.event_record(obj, kind=kind, reason=reason, last=now)
        )

    async def reasons(involved: str = "", limit: int = 0, token: str = "") -> tuple[list[str], str]:
        answer = await served.stub.ListEvents(
            network_pb2.ListEventsRequest(
                involved_object=involved, limit=limit, continue_token=token
            )
        )
        return sorted(loaded(d)["reason"] for d in answer.items), answer.continue_token

    assert await reasons("Network/digits") == (["Placed", "Stopped"], "")
    assert await reasons("PNode/p1") == (["Fenced"], "")
    first, token = await reasons(limit=3)
    rest, end = await reasons(limit=3, token=token)
    assert (len(first), sorted(first + rest), end) == (3, ["Fenced", "Placed", "Started",
                                                          "Stopped"], "")  # fmt: skip
    for bad in ("digits", "network digits", "Network/Bad_Name"):
        refused = await failure(
            served.stub.ListEvents(network_pb2.ListEventsRequest(involved_object=bad))
        )
        assert refused.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert (refused.details() or "").startswith("involved_object: must be \"Kind/name\""), bad
