"""A flood of results for work the sender was never assigned is refused and counted: a real
`dcnr-orchestrator serve` process, its driver inbox over a real socket, its /metrics."""

from __future__ import annotations

from pathlib import Path

import grpc
import numpy as np
from grpc import aio

from api import tensors
from api.dcnr.v1 import vnode_pb2
from tests.integration import cluster
from tests.support import identities, metrics, procs

FLOOD = 50


async def test_results_from_slots_never_assigned_are_refused_and_counted(tmp_path: Path) -> None:
    with procs.orchestrator(
        f"sqlite:///{tmp_path / 'state.db'}",
        extra=("--metrics-listen", "127.0.0.1:0", *identities.ca_flags(tmp_path)),
        log=tmp_path / "orchestrator.log",
    ) as served:
        assert served.metrics_port is not None
        api = cluster.Api(served.address)
        channel = aio.insecure_channel(served.address)
        try:
            await api.apply(cluster.chain_network("net", 2))
            # Signed by a PNode of this cluster that holds none of these slots.
            stub = identities.SignedVNodeStub(channel, identities.pnode_signer("someone"))
            tensor = tensors.encode(np.ones((2, 2), np.float32))
            codes = []
            for i in range(FLOOD):
                request = vnode_pb2.ForwardRequest(
                    header=cluster.HEADER,
                    job="j",
                    step=i + 1,
                    network="net",
                    sender_vnode="v1",  # a sink of the network, but not held by the sender
                    sender_replica=i % 3,
                    sender_epoch=1 + i,
                    target_vnode="__driver__",
                    tensor=tensor,
                    reply_to=served.address,
                )
                try:
                    await stub.Forward(request, timeout=10)
                except aio.AioRpcError as exc:
                    codes.append(exc.code())
            assert codes == [grpc.StatusCode.FAILED_PRECONDITION] * FLOOD
            refused = metrics.by_label(
                metrics.scrape(served.metrics_port), "dcnr_driver_results_refused_total", "reason"
            )
            # Every known reason is exported from the start (at 0); only StaleEpoch moved.
            assert {reason: n for reason, n in refused.items() if n} == {"StaleEpoch": FLOOD}
        finally:
            await channel.close(None)
            await api.close()
