"""The driver's gRPC transport over a real loopback socket: which agent refusals it reports
as passing (`PeerError.retryable`), so the driver retries them until its deadline, whether
the agent answered a Forward on a Deliver stream or, older than Deliver, as a unary call."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from grpc import aio

from api.dcnr.v1 import common_pb2, vnode_pb2, vnode_pb2_grpc
from controller.jobs import vnode_client
from controller.services import vnode_transport
from tests.support import identities


class Refusing(vnode_pb2_grpc.VNodeServiceServicer):
    """Refuses every Forward with `code`, as an agent would: on a Deliver stream, or with
    `streams` False as an agent older than Deliver (UNIMPLEMENTED), as the unary call."""

    def __init__(self) -> None:
        self.code = grpc.StatusCode.NOT_FOUND
        self.streams = True
        self.streamed = 0
        #: Read messages and never answer (a SIGSTOPped agent).
        self.hang = False

    async def Deliver(
        self, request_iterator: AsyncIterator[vnode_pb2.DeliverRequest], context: Any
    ) -> AsyncIterator[vnode_pb2.DeliverResponse]:
        if not self.streams:
            await context.abort(grpc.StatusCode.UNIMPLEMENTED, "older than Deliver")
        async for message in request_iterator:
            self.streamed += 1
            if self.hang:
                await asyncio.Event().wait()
            request = vnode_pb2.ForwardRequest.FromString(message.forward)
            yield vnode_pb2.DeliverResponse(
                sequence=message.sequence,
                code=self.code.value[0],
                details=common_pb2.ErrorDetails(reason="Refusing"),
                message=f"{request.target_vnode}: refused",
            )

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
@pytest.mark.parametrize("streams", [True, False], ids=["stream", "unary"])
async def test_which_refusals_the_driver_retries(
    agent: tuple[str, Refusing], code: grpc.StatusCode, retryable: bool, streams: bool
) -> None:
    address, servicer = agent
    servicer.code, servicer.streams = code, streams
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
    assert "act: refused" in str(caught.value)
    assert servicer.streamed == (1 if streams else 0)
    assert caught.value.reason == ("Refusing" if streams else "")


async def test_a_stream_that_answers_nothing_fails_the_message_as_retryable(
    agent: tuple[str, Refusing],
) -> None:
    """No answer within the call's seconds fails the stream and the message as a unary
    call that got no answer would (DEADLINE_EXCEEDED, retried); the next one opens a new
    stream."""
    address, servicer = agent
    servicer.hang = True
    transport = vnode_transport.GrpcTransport(
        signer=identities.orchestrator_signer(), ca=lambda: None
    )
    try:
        with pytest.raises(vnode_client.PeerError) as caught:
            await transport.forward(
                address, vnode_pb2.ForwardRequest(target_vnode="act"), seconds=0.2
            )
        assert caught.value.retryable
        assert str(caught.value).startswith("DEADLINE_EXCEEDED")
        servicer.hang = False
        with pytest.raises(vnode_client.PeerError) as refused:
            await transport.forward(
                address, vnode_pb2.ForwardRequest(target_vnode="act"), seconds=5
            )
        assert refused.value.reason == "Refusing", "answered, on a new stream"
    finally:
        await transport.close()
    assert servicer.streamed == 2
