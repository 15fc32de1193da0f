"""ResolutionService over a real gRPC socket, answering from a view of a real SQLite store.

Time is a FakeClock shared by the view and the service: a lease expires because the test
moves the clock past it, with no store write, exactly as a dead PNode's lease does."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import grpc
import pytest
from grpc import aio

from api.dcnr.v1 import common_pb2, resolve_pb2, resolve_pb2_grpc
from api.resources import allocation, lease
from controller.runtime import clock as clocks
from controller.services import resolution_service
from controller.state import view as view_mod
from store import sqlite
from tests.controller.state import test_view as records

LEASE = timedelta(seconds=records.CONFIG.lease_duration)


class Served:
    def __init__(self, store: sqlite.SqliteStore, clock: clocks.FakeClock) -> None:
        self.store = store
        self.clock = clock
        self.view = view_mod.View(store, clock, config=records.CONFIG)
        self.resolved: list[int] = []
        self.server = aio.server()
        self.service = resolution_service.ResolutionService(
            view=self.view, clock=clock, replica_id="replica-a", on_resolved=self.resolved.append
        )
        resolve_pb2_grpc.add_ResolutionServiceServicer_to_server(self.service, self.server)
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.channel = aio.insecure_channel(f"127.0.0.1:{self.port}")
        self.stub = resolve_pb2_grpc.ResolutionServiceStub(self.channel)

    async def resolve(
        self, network: str, vnode: str, *, min_epoch: int = 0
    ) -> list[tuple[str, int, int]]:
        reply = await self.stub.Resolve(
            resolve_pb2.ResolveRequest(network=network, vnode=vnode, min_epoch=min_epoch),
            timeout=10,
        )
        assert (reply.endpoints.network, reply.endpoints.vnode) == (network, vnode)
        assert reply.header.served_by == "replica-a"
        return [(e.pnode_id, e.replica, e.epoch) for e in reply.endpoints.endpoints]


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


async def two_replicas(served: Served) -> None:
    """Network mnist (input -> out); input has replicas on p1 and p2, out on p1."""
    now = served.clock.now()
    await records.create_all(
        served.store,
        records.network_record("mnist", ("input", "out")),
        records.pnode_record("p1"),
        records.pnode_record("p2"),
        records.lease_record("p1", renewed=now),
        records.lease_record("p2", renewed=now),
        records.allocation_record("mnist", "input", 1, "p1", epoch=3),
        records.allocation_record("mnist", "input", 0, "p2", epoch=1),
        records.allocation_record("mnist", "out", 0, "p1"),
    )
    await served.view.refresh()


async def renew(served: Served, pnode_name: str) -> None:
    """A later persisted renewal, as the lease keeper writes it."""
    current = await served.store.get(lease.PNodeLease, pnode_name)
    current.spec.renew_time = served.clock.now()
    served.view.apply_written([await served.store.update(current)])


async def failure(awaitable) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await awaitable
    return caught.value


# -- Resolve -------------------------------------------------------------------------------


async def test_resolve_returns_live_endpoints_in_replica_order(served) -> None:
    await two_replicas(served)
    assert await served.resolve("mnist", "input") == [("p2", 0, 1), ("p1", 1, 3)]
    reply = await served.stub.Resolve(resolve_pb2.ResolveRequest(network="mnist", vnode="out"))
    assert reply.endpoints.endpoints[0].address == "p1.example:7000"
    assert served.resolved == [1, 1]


async def test_an_expired_lease_drops_its_endpoints_without_any_store_write(served) -> None:
    await two_replicas(served)
    await served.clock.advance(records.CONFIG.lease_duration / 2)
    await renew(served, "p2")
    await served.clock.advance(records.CONFIG.lease_duration / 2)
    assert await served.resolve("mnist", "input") == [("p2", 0, 1)]
    assert await served.resolve("mnist", "out") == []


async def test_a_superseded_epoch_is_never_returned(served) -> None:
    await two_replicas(served)
    moved = await served.store.get(allocation.Allocation, "mnist.out.0")
    moved.spec.pnode, moved.spec.epoch = "p2", 2
    await served.store.update(moved)  # by another replica: this one learns by refreshing
    await served.clock.advance(0.25)
    await served.view.refresh()
    assert await served.resolve("mnist", "out") == [("p2", 0, 2)]


async def test_min_epoch_leaves_out_older_epochs(served) -> None:
    await two_replicas(served)
    assert await served.resolve("mnist", "input", min_epoch=2) == [("p1", 1, 3)]
    assert await served.resolve("mnist", "input", min_epoch=4) == []
    error = await failure(
        served.stub.Resolve(resolve_pb2.ResolveRequest(network="mnist", vnode="out", min_epoch=-1))
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "min_epoch" in (error.details() or "")


@pytest.mark.parametrize(
    ("network", "vnode", "code", "words"),
    [
        ("", "input", grpc.StatusCode.INVALID_ARGUMENT, ["network:", "must name a network"]),
        ("mnist", "", grpc.StatusCode.INVALID_ARGUMENT, ["vnode:", "must name a vnode"]),
        ("nope", "input", grpc.StatusCode.NOT_FOUND, ["network 'nope' not found"]),
        ("mnist", "fc9", grpc.StatusCode.NOT_FOUND, ["no vnode 'fc9'", "its vnodes: input, out"]),
    ],
)
async def test_resolve_errors_name_the_field_and_value(served, network, vnode, code, words) -> None:
    await two_replicas(served)
    error = await failure(
        served.stub.Resolve(resolve_pb2.ResolveRequest(network=network, vnode=vnode))
    )
    assert error.code() == code
    for word in words:
        assert word in (error.details() or "")


async def test_the_list_of_known_vnodes_is_capped(served) -> None:
    names = tuple(f"v{i:02d}" for i in range(30))
    await records.create_all(served.store, records.network_record("wide", names))
    await served.view.refresh()
    error = await failure(
        served.stub.Resolve(resolve_pb2.ResolveRequest(network="wide", vnode="zz"))
    )
    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert "v19 and 10 more" in (error.details() or "")
    assert "v20" not in (error.details() or "")


async def test_a_foreign_api_version_is_refused(served) -> None:
    await two_replicas(served)
    header = common_pb2.RequestHeader(api_version="dcnr.io/v9")
    error = await failure(
        served.stub.Resolve(resolve_pb2.ResolveRequest(header=header, network="mnist", vnode="out"))
    )
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION


# -- BatchResolve --------------------------------------------------------------------------


async def test_batch_resolve_answers_in_request_order(served) -> None:
    await two_replicas(served)
    refs = [
        common_pb2.VNodeRef(network="mnist", vnode="out"),
        common_pb2.VNodeRef(network="mnist", vnode="input"),
    ]
    reply = await served.stub.BatchResolve(resolve_pb2.BatchResolveRequest(vnodes=refs))
    assert [(e.vnode, [x.pnode_id for x in e.endpoints]) for e in reply.endpoints] == [
        ("out", ["p1"]),
        ("input", ["p2", "p1"]),
    ]
    assert served.resolved == [2]


async def test_batch_resolve_names_the_bad_entry(served) -> None:
    await two_replicas(served)
    refs = [
        common_pb2.VNodeRef(network="mnist", vnode="out"),
        common_pb2.VNodeRef(network="mnist", vnode="fc9"),
    ]
    error = await failure(served.stub.BatchResolve(resolve_pb2.BatchResolveRequest(vnodes=refs)))
    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert (error.details() or "").startswith("vnodes[1].vnode: network 'mnist' has no vnode")


# -- WatchEndpoints ------------------------------------------------------------------------


def endpoints_of(message: resolve_pb2.WatchEndpointsResponse) -> dict[str, list[str]]:
    return {c.vnode: [e.pnode_id for e in c.endpoints] for c in message.changed}


async def next_message(call) -> resolve_pb2.WatchEndpointsResponse:
    message = await asyncio.wait_for(call.read(), timeout=10)
    assert isinstance(message, resolve_pb2.WatchEndpointsResponse), "the stream ended"
    return message


async def test_watch_sends_everything_then_only_what_changed(served) -> None:
    await two_replicas(served)
    call = served.stub.WatchEndpoints(resolve_pb2.WatchEndpointsRequest(network="mnist"))
    first = await next_message(call)
    assert endpoints_of(first) == {"input": ["p2", "p1"], "out": ["p1"]}

    moved = await served.store.get(allocation.Allocation, "mnist.out.0")
    moved.spec.pnode, moved.spec.epoch = "p2", 2
    served.view.apply_written([await served.store.update(moved)])
    second = await next_message(call)
    assert endpoints_of(second) == {"out": ["p2"]}
    assert second.changed[0].endpoints[0].epoch == 2
    assert second.sequence > first.sequence

    # p1's lease runs out with no write at all: the watch notices on its own.
    await served.clock.advance(records.CONFIG.lease_duration / 2)
    await renew(served, "p2")
    await served.clock.advance(records.CONFIG.lease_duration / 2)
    third = await next_message(call)
    assert endpoints_of(third) == {"input": ["p2"]}
    assert third.sequence > second.sequence
    call.cancel()
    assert call.cancelled()


async def test_watch_of_chosen_vnodes_reports_only_them(served) -> None:
    await two_replicas(served)
    call = served.stub.WatchEndpoints(
        resolve_pb2.WatchEndpointsRequest(network="mnist", vnodes=["out"])
    )
    assert endpoints_of(await next_message(call)) == {"out": ["p1"]}
    moved = await served.store.get(allocation.Allocation, "mnist.input.0")
    moved.spec.epoch = 2
    served.view.apply_written([await served.store.update(moved)])  # not watched
    gone = await served.store.get(allocation.Allocation, "mnist.out.0")
    await served.store.delete(allocation.Allocation, "mnist.out.0")
    served.view.apply_deleted(allocation.Allocation, gone.name)
    assert endpoints_of(await next_message(call)) == {"out": []}
    call.cancel()


async def test_watch_of_an_unknown_network_is_not_found(served) -> None:
    call = served.stub.WatchEndpoints(resolve_pb2.WatchEndpointsRequest(network="nope"))
    error = await failure(call.read())
    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert "network 'nope' not found" in (error.details() or "")
