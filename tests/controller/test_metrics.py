"""Metrics as Prometheus scrapes them: over HTTP from a real bound port, parsed with the
Prometheus text-format parser, fed by a real manager, view and gRPC server."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator

import grpc
import pytest
from grpc import aio

from api.dcnr.v1 import resolve_pb2, resolve_pb2_grpc
from controller import metrics as metrics_mod
from controller.runtime import clock as clocks
from controller.runtime import manager as managers
from controller.services import resolution_service, rpc_timer
from controller.state import view as view_mod
from reconcilers import base
from store import sqlite
from tests.controller.state import test_view as records
from tests.support import metrics as support_metrics
from tests.support import wait
from tests.support.metrics import scrape


@pytest.fixture
async def metrics() -> AsyncIterator[metrics_mod.Metrics]:
    it = metrics_mod.Metrics()
    yield it
    it.stop_http()


class Flaky:
    name = "flaky"

    async def reconcile(self, key: str) -> base.Result:
        if key == "bad":
            raise RuntimeError("boom")
        return base.Result()


async def test_scrape_parses_and_carries_every_family(metrics) -> None:
    port = metrics.start_http("127.0.0.1", 0)
    assert port > 0
    metrics.heartbeat("renewed")
    metrics.heartbeat("fenced")
    metrics.resolved(3)
    metrics.replaced("pnode-lost", 2)
    samples = await asyncio.to_thread(scrape, port)
    assert samples[("dcnr_heartbeats_total", (("result", "renewed"),))] == 1
    assert samples[("dcnr_heartbeats_total", (("result", "fenced"),))] == 1
    assert samples[("dcnr_resolutions_total", ())] == 3
    assert samples[("dcnr_replacements_total", (("reason", "pnode-lost"),))] == 2


async def test_two_instances_do_not_share_numbers() -> None:
    first, second = metrics_mod.Metrics(), metrics_mod.Metrics()
    first.resolved(5)
    assert "dcnr_resolutions_total 5.0" in first.exposition()
    assert "dcnr_resolutions_total 0.0" in second.exposition()


async def test_reconciles_queue_depth_and_view_state_at_scrape_time(metrics, tmp_path) -> None:
    clock = clocks.FakeClock()
    manager = managers.Manager(clock, rng=random.Random(1))
    manager.register(Flaky(), workers=1)
    metrics.watch_manager(manager)
    store = await sqlite.SqliteStore.open(tmp_path / "state.db")
    try:
        view = view_mod.View(store, clock, config=records.CONFIG)
        metrics.watch_view(view)
        await records.create_all(
            store,
            records.pnode_record("p1"),
            records.pnode_record("p2"),
            records.pnode_record("p3", phase="Lost"),
            records.allocation_record("mnist", "input", 0, "p1"),
        )
        await view.refresh()
        manager.enqueue("flaky", "a")
        manager.enqueue("flaky", "b")
        port = metrics.start_http("127.0.0.1", 0)
        before = await asyncio.to_thread(scrape, port)
        assert before[("dcnr_workqueue_depth", (("loop", "flaky"),))] == 2
        assert before[("dcnr_pnodes", (("phase", "Ready"),))] == 2
        assert before[("dcnr_pnodes", (("phase", "Lost"),))] == 1
        assert before[("dcnr_pnodes", (("phase", "NotReady"),))] == 0
        assert before[("dcnr_allocations", ())] == 1

        await manager.start()
        manager.enqueue("flaky", "bad")
        await clock.settle()
        after = await asyncio.to_thread(scrape, port)
        assert after[("dcnr_reconcile_duration_seconds_count", (("loop", "flaky"),))] == 3
        assert after[("dcnr_reconcile_errors_total", (("loop", "flaky"),))] == 1
        assert after[("dcnr_workqueue_depth", (("loop", "flaky"),))] == 0
        await manager.stop(grace=1)
    finally:
        await store.close()


async def test_the_interceptor_records_method_and_status_code(metrics, tmp_path) -> None:
    store = await sqlite.SqliteStore.open(tmp_path / "state.db")
    clock = clocks.FakeClock()
    view = view_mod.View(store, clock, config=records.CONFIG)
    await records.create_all(store, records.network_record("mnist"))
    await view.refresh()
    server = aio.server(interceptors=[rpc_timer.RpcTimer(metrics)])
    service = resolution_service.ResolutionService(
        view=view, clock=clock, replica_id="r", on_resolved=metrics.resolved
    )
    resolve_pb2_grpc.add_ResolutionServiceServicer_to_server(service, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = resolve_pb2_grpc.ResolutionServiceStub(channel)
            await stub.Resolve(resolve_pb2.ResolveRequest(network="mnist", vnode="input"))
            with pytest.raises(grpc.aio.AioRpcError):
                await stub.Resolve(resolve_pb2.ResolveRequest(network="nope", vnode="input"))
            call = stub.WatchEndpoints(resolve_pb2.WatchEndpointsRequest(network="mnist"))
            await asyncio.wait_for(call.read(), timeout=10)
            call.cancel()
            bad = stub.WatchEndpoints(resolve_pb2.WatchEndpointsRequest(network=""))
            with pytest.raises(grpc.aio.AioRpcError):
                await bad.read()

        method = "/dcnr.v1.ResolutionService/Resolve"
        watch = "/dcnr.v1.ResolutionService/WatchEndpoints"
        wanted = {
            (method, "OK"),
            (method, "NOT_FOUND"),
            (watch, "INVALID_ARGUMENT"),
            (watch, "CANCELLED"),
        }
        http_port = metrics.start_http("127.0.0.1", 0)

        def recorded(samples: support_metrics.Samples) -> bool:
            seen = {
                (dict(labels)["method"], dict(labels)["code"])
                for (name, labels), value in samples.items()
                if name == "dcnr_rpc_duration_seconds_count" and value > 0
            }
            return wanted <= seen

        # The cancelled stream is recorded when the server notices the cancel.
        samples = await wait.until(
            lambda: asyncio.to_thread(scrape, http_port),
            within=10,
            what=f"durations recorded for {sorted(wanted)}",
            accept=recorded,
        )
        assert samples[("dcnr_resolutions_total", ())] >= 2
    finally:
        await server.stop(None)
        await store.close()


async def test_a_taken_port_is_a_clear_error(metrics) -> None:
    port = metrics.start_http("127.0.0.1", 0)
    other = metrics_mod.Metrics()
    with pytest.raises(OSError, match=r"--metrics-listen 127\.0\.0\.1"):
        other.start_http("127.0.0.1", port)


def test_metrics_module_uses_no_global_registry() -> None:
    from prometheus_client import REGISTRY

    metrics_mod.Metrics()
    names = {m.name for m in REGISTRY.collect()}
    assert not any(name.startswith("dcnr_") for name in names)
