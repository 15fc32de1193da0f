"""The control plane end to end: a real `dcnr-orchestrator serve` process, test PNodes
written as plain gRPC clients, real sockets, real store files.

Register 20 PNodes, apply a network of 50 VNodes, see it placed; kill one PNode's
heartbeats and see its VNodes re-placed and resolvable elsewhere under default settings
(how fast is measured by `benchmarks/failover.py`, not asserted here: this test's deadline
only bounds the wait); a paused PNode that comes back is fenced; a forged credential is
refused; /metrics parses and health answers SERVING.
"""

from __future__ import annotations

import asyncio
import urllib.request
from collections import Counter
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from api.dcnr.v1 import pnode_pb2
from tests.integration import cluster
from tests.support import pnode_client, procs, wait

pytestmark = pytest.mark.slow

PNODES = 20
VNODES = 50
#: How long the test waits for the re-placement before failing: a liveness bound with room
#: for a loaded machine, not a speed claim (the failover benchmark measures that).
FAILOVER_WAIT = 60.0


@pytest.fixture
def store_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'state.db'}"


async def test_place_fail_over_fence_and_refuse_forgeries(store_url: str) -> None:
    served = procs.orchestrator(store_url, extra=["--metrics-listen", "127.0.0.1:0"])
    with served as (_, addr, metrics_port, _):
        api = cluster.Api(addr)
        nodes = [
            pnode_client.TestPNode(
                addr,
                f"pnode-{i:02d}",
                cpu_millis=1000,
                memory_bytes=2**30,
                data_plane_address=f"127.0.0.1:{7100 + i}",
            )
            for i in range(PNODES)
        ]
        try:
            for node in nodes:
                await node.register()
                node.start()
            manifest = cluster.chain_network("chain", VNODES)
            await api.apply(manifest)
            every = {f"v{i}": 1 for i in range(VNODES)}
            _, placed = await api.wait_resolvable("chain", every, within=30)
            await cluster.check_invariants(store_url)

            # Death: the PNode hosting most VNodes stops heartbeating.
            hosting = Counter(eps[0][0] for eps in placed.values())
            victim_name, count = hosting.most_common(1)[0]
            victim = next(n for n in nodes if n.name == victim_name)
            moved = {v: 1 for v, eps in placed.items() if eps[0][0] == victim_name}
            assert len(moved) == count
            await victim.stop()
            took, after = await api.wait_resolvable(
                "chain", moved, within=FAILOVER_WAIT, avoid=victim_name
            )
            print(f"\nfailover: {count} vnodes re-placed and resolvable {took:.2f}s after death")
            for vnode, eps in after.items():
                assert eps[0][1] > placed[vnode][0][1], f"{vnode}: epoch did not advance"
            allocations = await cluster.check_invariants(store_url)
            assert len(allocations) == VNODES
            assert victim_name not in {a.spec.pnode for a in allocations}

            # The dead PNode comes back: fenced until it registers again.
            reply = await victim.heartbeat_once()
            assert reply.lease_state == pnode_pb2.LEASE_STATE_FENCED
            old = victim.incarnation
            await victim.register()
            assert victim.incarnation > old
            reply = await victim.heartbeat_once()
            assert reply.lease_state == pnode_pb2.LEASE_STATE_ACTIVE

            # Forged credentials: a made-up one, and another PNode's.
            for credential in ("forged-credential", nodes[1].credential):
                request = pnode_pb2.HeartbeatRequest(
                    header=cluster.HEADER, pnode_id=nodes[0].name, incarnation=nodes[0].incarnation
                )
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    await nodes[0].stub.Heartbeat(
                        request, metadata=nodes[0].metadata(credential), timeout=10
                    )
                assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED

            await _paused_pnode_is_fenced(nodes[2])
            await _health_and_metrics(addr, metrics_port)
        finally:
            for node in nodes:
                await node.close()
            await api.close()


async def _paused_pnode_is_fenced(node: pnode_client.TestPNode) -> None:
    """A partitioned (paused) PNode whose lease expired is refused when it resumes."""
    node.pause()
    await wait.until(
        lambda: _pnode_json(node),
        within=30,
        what="the paused PNode's lease expired",
        accept=lambda body: b'"phase":"Ready"' not in body,
        every=0.1,
    )
    reply = await node.heartbeat_once()
    assert reply.lease_state == pnode_pb2.LEASE_STATE_FENCED
    assert node.fenced


async def _pnode_json(node: pnode_client.TestPNode) -> bytes:
    got = await node.stub.GetPNode(
        pnode_pb2.GetPNodeRequest(header=cluster.HEADER, name=node.name), timeout=10
    )
    return got.pnode.json


async def _health_and_metrics(address: str, port: int | None) -> None:
    async with grpc.aio.insecure_channel(address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        reply = await health.Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
    assert port is not None, "the orchestrator did not say where /metrics is"
    body = await asyncio.to_thread(
        lambda: urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read()
    )
    families = {f.name: f for f in text_string_to_metric_families(body.decode())}
    assert "dcnr_heartbeats" in families
    assert "dcnr_reconcile_duration_seconds" in families
    heartbeats = sum(
        s.value for s in families["dcnr_heartbeats"].samples if s.name.endswith("_total")
    )
    assert heartbeats > 0
