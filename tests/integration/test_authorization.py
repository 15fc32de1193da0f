"""Authorization end to end: a real `dcnr-orchestrator serve --admin-token-file
--read-only-token-file` process, PNodes as plain gRPC clients over real sockets.

Who ResolutionService answers once the server has tokens (a PNode hosting part of the
network, with the credential Register gave it; admin and read-only tokens) and who it
refuses (anonymous callers, a PNode of another network), that a read-only token reads but
changes nothing, and that every refusal is counted in /metrics. The unit tests in
tests/controller/services/test_authorization.py cover each rule; this checks the wiring
in `serve`.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest
from grpc import aio

from api.dcnr.v1 import (
    network_pb2,
    pnode_pb2,
    pnode_pb2_grpc,
    resolve_pb2,
    resolve_pb2_grpc,
    validation_pb2,
    validation_pb2_grpc,
)
from tests.integration import cluster
from tests.support import metrics, pnode_client, procs

pytestmark = pytest.mark.slow

ADMIN, READ_ONLY = "the-admin-token", "the-read-only-token"
RESOLVE = "/dcnr.v1.ResolutionService/Resolve"


async def _resolve(
    channel: aio.Channel, secret: str | None, network: str, vnode: str
) -> list[str] | tuple[grpc.StatusCode, str]:
    """The hosting PNodes, or the refusal's (code, details)."""
    stub = resolve_pb2_grpc.ResolutionServiceStub(channel)
    try:
        reply = await stub.Resolve(
            resolve_pb2.ResolveRequest(header=cluster.HEADER, network=network, vnode=vnode),
            metadata=(("authorization", f"Bearer {secret}"),) if secret else (),
            timeout=10,
        )
    except aio.AioRpcError as exc:
        return exc.code(), exc.details() or ""
    return [e.pnode_id for e in reply.endpoints.endpoints]


async def test_resolution_and_the_read_only_role_in_a_served_orchestrator(
    tmp_path: Path,
) -> None:
    (tmp_path / "admin").write_text(f"{ADMIN}\n")
    (tmp_path / "read-only").write_text(f"# dashboards\n{READ_ONLY}\n")
    served = procs.orchestrator(
        f"sqlite:///{tmp_path / 'state.db'}",
        extra=[
            "--admin-token-file", str(tmp_path / "admin"),
            "--read-only-token-file", str(tmp_path / "read-only"),
            "--metrics-listen", "127.0.0.1:0",
        ],
    )  # fmt: skip
    with served as (_, addr, metrics_port, _):
        admin = cluster.Api(addr, token=ADMIN)
        viewer = cluster.Api(addr, token=READ_ONLY)
        nodes = [
            pnode_client.TestPNode(addr, f"pnode-{i}", data_plane_address=f"127.0.0.1:{7300 + i}")
            for i in range(3)
        ]
        channel = aio.insecure_channel(addr)
        try:
            # alpha on pnode-0 and pnode-1; beta, applied with those cordoned, on pnode-2.
            for node in nodes[:2]:
                await node.register()
                node.start()
            await admin.apply(cluster.chain_network("alpha", 2))
            _, alpha = await admin.wait_resolvable("alpha", {"v0": 1, "v1": 1}, within=30)
            pnodes = pnode_pb2_grpc.PNodeServiceStub(admin.channel)
            for node in nodes[:2]:
                await pnodes.Cordon(
                    pnode_pb2.CordonRequest(header=cluster.HEADER, pnode=node.name),
                    metadata=admin.metadata,
                    timeout=10,
                )
            await nodes[2].register()
            nodes[2].start()
            await admin.apply(cluster.chain_network("beta", 1))
            _, beta = await admin.wait_resolvable("beta", {"v0": 1}, within=30)
            assert beta["v0"][0][0] == "pnode-2"

            # A hosting PNode resolves its own VNode and its neighbour with its credential.
            host = next(n for n in nodes if n.name == alpha["v0"][0][0])
            assert await _resolve(channel, host.credential, "alpha", "v1") == [alpha["v1"][0][0]]
            assert await _resolve(channel, host.credential, "alpha", "v0") == [host.name]
            assert await _resolve(channel, nodes[2].credential, "beta", "v0") == ["pnode-2"]

            # A PNode of another network, and anonymous callers, are refused; the answer
            # to them is the same whether or not the network exists.
            denied = await _resolve(channel, nodes[2].credential, "alpha", "v0")
            assert denied == (
                grpc.StatusCode.PERMISSION_DENIED,
                "pnode 'pnode-2' hosts no VNode of network 'alpha'; a PNode may resolve only "
                "the networks it hosts part of",
            )
            anonymous = await _resolve(channel, None, "alpha", "v0")
            assert isinstance(anonymous, tuple)
            assert anonymous[0] == grpc.StatusCode.UNAUTHENTICATED
            assert await _resolve(channel, None, "ghost", "v0") == anonymous
            assert await _resolve(channel, "forged", "alpha", "no-such-vnode") == anonymous

            # Tokens: both roles resolve any network; only an entitled caller's NOT_FOUND
            # names the network's VNodes.
            for token in (ADMIN, READ_ONLY):
                assert await _resolve(channel, token, "beta", "v0") == ["pnode-2"]
                missing = await _resolve(channel, token, "alpha", "nope")
                assert isinstance(missing, tuple)
                assert missing[0] == grpc.StatusCode.NOT_FOUND
                assert "v0, v1" in missing[1]
            assert await viewer.endpoints("alpha", ["v0", "v1"]) == alpha

            # The read-only token reads, and is refused a change, naming role and method.
            got = await viewer.networks.GetNetwork(
                network_pb2.GetNetworkRequest(header=cluster.HEADER, name="alpha"),
                metadata=viewer.metadata,
                timeout=10,
            )
            assert got.document.json
            with pytest.raises(aio.AioRpcError) as caught:
                await viewer.networks.DeleteNetwork(
                    network_pb2.DeleteNetworkRequest(header=cluster.HEADER, name="alpha"),
                    metadata=viewer.metadata,
                    timeout=10,
                )
            assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
            assert "role read-only may not call /dcnr.v1.NetworkService/DeleteNetwork" in (
                caught.value.details() or ""
            )
            assert await _resolve(channel, READ_ONLY, "alpha", "v0") == [alpha["v0"][0][0]]

            # A report with a forged credential: refused alike for a PNode and a stranger.
            validation = validation_pb2_grpc.ValidationServiceStub(channel)
            reports = []
            for name in ("pnode-0", "nobody"):
                with pytest.raises(aio.AioRpcError) as caught:
                    await validation.ReportResult(
                        validation_pb2.ReportResultRequest(header=cluster.HEADER, pnode_id=name),
                        metadata=(("authorization", "Bearer forged"),),
                        timeout=10,
                    )
                reports.append((caught.value.code(), caught.value.details()))
            assert reports[0] == reports[1]
            assert reports[0][0] == grpc.StatusCode.UNAUTHENTICATED

            assert metrics_port is not None
            samples = await asyncio.to_thread(metrics.scrape, metrics_port)
            refused = {
                (labels["method"], labels["reason"]): value
                for (name, pairs), value in samples.items()
                if name == "dcnr_rpc_refused_total"
                for labels in [dict(pairs)]
            }
            assert refused[(RESOLVE, "NotHosting")] == 1
            assert refused[(RESOLVE, "Unauthenticated")] == 3
            assert refused[("/dcnr.v1.NetworkService/DeleteNetwork", "ReadOnly")] == 1
            assert refused[("/dcnr.v1.ValidationService/ReportResult", "Unauthenticated")] == 2
            assert refused[("/dcnr.v1.NetworkService/Apply", "ReadOnly")] == 0  # from the start
        finally:
            await channel.close(None)
            for node in nodes:
                await node.close()
            await admin.close()
            await viewer.close()
