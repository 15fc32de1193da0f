"""The driver's gRPC transport over a real loopback socket: which agent refusals it reports
as passing (`PeerError.retryable`), so the driver retries them until its deadline."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from grpc import aio

from api.dcnr.v1 import vnode_pb2, vnode_pb2_grpc
from controller.jobs import vnode_client
from controller.services import vnode_transport
from tests.support import identities


class Refusing(vnode_pb2_grpc.VNodeServiceServicer):
    """Refuses every Forward with `code`, as an agent would."""

    def __init__(self) -> None:
        self.code = grpc.StatusCode.NOT_FOUND

    async def Forward(
        self, request: vnode_pb2.ForwardRequest, context: Any
    ) -> vnode_pb2.ForwardResponse:
        await context.abort(self.code, f"{request.target_vnode}: refused")
        raise AssertionError("abort returns only by raising")


@pytest.fixture
async def agent() -> AsyncIterator[tuple[str, Refusing]]:
    servicer = Refusing()  # type: ignore[abstract]  # the other methods: UNIMPLEMENTED
    server = aio.server()
    vnode_pb2_grpc.add_VNodeServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield f"127.0.0.1:{port}", servicer
    finally:
        await server.stop(None)


@pytest.mark.parametrize(
    ("code", "retryable"),
    [
        # Placed but not yet told: the agent does not host the slot *yet*.
        (grpc.StatusCode.NOT_FOUND, True),
        (grpc.StatusCode.UNAVAILABLE, True),
        (grpc.StatusCode.FAILED_PRECONDITION, True),
        (grpc.StatusCode.INVALID_ARGUMENT, False),
        (grpc.StatusCode.PERMISSION_DENIED, False),
    ],
)
async def test_which_refusals_the_driver_retries(
    agent: tuple[str, Refusing], code: grpc.StatusCode, retryable: bool
) -> None:
    address, servicer = agent
    servicer.code = code
    # The stand-in agent listens plaintext, in process (TLS: tests/agent/test_dataplane_tls).
    transport = vnode_transport.GrpcTransport(
        signer=identities.orchestrator_signer(), ca=lambda: None
    )
    try:
        with pytest.raises(vnode_client.PeerError) as caught:
            await transport.forward(
                address, vnode_pb2.ForwardRequest(target_vnode="act"), seconds=5
            )
    finally:
        await transport.close()
    assert caught.value.retryable is retryable
    assert str(caught.value).startswith(code.name)
