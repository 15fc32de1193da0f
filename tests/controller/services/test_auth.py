"""The admin token interceptor on a real grpc.aio server: which calls it guards, and the
codes a missing or wrong token gets."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc import aio

from api.dcnr.v1 import (
    common_pb2,
    network_pb2,
    network_pb2_grpc,
    pnode_pb2,
    pnode_pb2_grpc,
)
from controller.services import auth, rpc

TOKENS = {"first-token", "second-token"}


class Networks(network_pb2_grpc.NetworkServiceServicer):
    async def ListNetworks(self, request: Any, context: Any) -> network_pb2.ListNetworksResponse:
        return network_pb2.ListNetworksResponse(continue_token="served")

    async def WatchNetworks(
        self, request: Any, context: Any
    ) -> AsyncIterator[network_pb2.WatchNetworksResponse]:
        yield network_pb2.WatchNetworksResponse(
            event=common_pb2.WatchEvent(type=common_pb2.WATCH_EVENT_TYPE_BOOKMARK)
        )


class PNodes(pnode_pb2_grpc.PNodeServiceServicer):
    async def Heartbeat(self, request: Any, context: Any) -> pnode_pb2.HeartbeatResponse:
        return pnode_pb2.HeartbeatResponse(assignment_set_version=7)

    async def Cordon(self, request: Any, context: Any) -> pnode_pb2.CordonResponse:
        return pnode_pb2.CordonResponse()


@pytest.fixture
async def server_with(request: pytest.FixtureRequest) -> AsyncIterator[str]:
    tokens: set[str] = request.param
    server = aio.server(interceptors=[auth.AdminTokenInterceptor(tokens)])
    # The generated servicers declare every RPC abstract; unimplemented ones answer
    # UNIMPLEMENTED, which these tests never call.
    network_pb2_grpc.add_NetworkServiceServicer_to_server(Networks(), server)  # type: ignore[abstract]
    pnode_pb2_grpc.add_PNodeServiceServicer_to_server(PNodes(), server)  # type: ignore[abstract]
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        await server.stop(None)


def _metadata(token: str | None) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),) if token is not None else ()


async def _list(address: str, token: str | None) -> network_pb2.ListNetworksResponse:
    async with aio.insecure_channel(address) as channel:
        stub = network_pb2_grpc.NetworkServiceStub(channel)
        return await stub.ListNetworks(
            network_pb2.ListNetworksRequest(), metadata=_metadata(token), timeout=10
        )


@pytest.mark.parametrize("server_with", [TOKENS], indirect=True)
@pytest.mark.parametrize("token", sorted(TOKENS))
async def test_a_configured_token_passes(server_with: str, token: str) -> None:
    reply = await _list(server_with, token)
    assert reply.continue_token == "served"


@pytest.mark.parametrize("server_with", [TOKENS], indirect=True)
@pytest.mark.parametrize(
    ("token", "code", "reason"),
    [
        (None, grpc.StatusCode.UNAUTHENTICATED, b"Unauthenticated"),
        ("", grpc.StatusCode.UNAUTHENTICATED, b"Unauthenticated"),
        ("first-token-but-longer", grpc.StatusCode.PERMISSION_DENIED, b"Forbidden"),
        ("wrong", grpc.StatusCode.PERMISSION_DENIED, b"Forbidden"),
    ],
)
async def test_missing_and_wrong_tokens_are_refused(
    server_with: str, token: str | None, code: grpc.StatusCode, reason: bytes
) -> None:
    with pytest.raises(aio.AioRpcError) as caught:
        await _list(server_with, token)
    assert caught.value.code() == code
    trailing: dict[str, Any] = dict(caught.value.trailing_metadata() or ())  # type: ignore[arg-type]
    details = common_pb2.ErrorDetails.FromString(trailing[rpc.ERROR_DETAILS_KEY])
    assert reason.decode() == details.reason


@pytest.mark.parametrize("server_with", [TOKENS], indirect=True)
async def test_streams_and_admin_pnode_calls_are_guarded(server_with: str) -> None:
    async with aio.insecure_channel(server_with) as channel:
        networks = network_pb2_grpc.NetworkServiceStub(channel)
        with pytest.raises(aio.AioRpcError) as caught:
            async for _ in networks.WatchNetworks(network_pb2.WatchNetworksRequest(), timeout=10):
                pass
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
        pnodes = pnode_pb2_grpc.PNodeServiceStub(channel)
        with pytest.raises(aio.AioRpcError) as refused:
            await pnodes.Cordon(
                pnode_pb2.CordonRequest(pnode="p"), metadata=_metadata("wrong"), timeout=10
            )
        assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
        await pnodes.Cordon(
            pnode_pb2.CordonRequest(pnode="p"), metadata=_metadata("second-token"), timeout=10
        )


@pytest.mark.parametrize("server_with", [TOKENS], indirect=True)
async def test_agent_calls_are_left_to_pnode_credentials(server_with: str) -> None:
    async with aio.insecure_channel(server_with) as channel:
        pnodes = pnode_pb2_grpc.PNodeServiceStub(channel)
        for token in (None, "a-pnode-credential"):
            reply = await pnodes.Heartbeat(
                pnode_pb2.HeartbeatRequest(pnode_id="p"), metadata=_metadata(token), timeout=10
            )
            assert reply.assignment_set_version == 7


@pytest.mark.parametrize("server_with", [set()], indirect=True)
async def test_no_tokens_configured_means_no_admin_auth(server_with: str) -> None:
    assert (await _list(server_with, None)).continue_token == "served"
    assert (await _list(server_with, "anything")).continue_token == "served"


def test_token_file(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    path.write_text("# admins\nfirst-token\n\n  second-token  \n")
    assert auth.load_tokens(path) == TOKENS
    path.write_text("# nobody\n\n")
    with pytest.raises(ValueError, match="holds no token"):
        auth.load_tokens(path)
    path.write_text("two words\n")
    with pytest.raises(ValueError, match="whitespace"):
        auth.load_tokens(path)


def test_which_methods_are_guarded() -> None:
    assert auth.guarded("/dcnr.v1.NetworkService/Apply")
    assert auth.guarded("/dcnr.v1.JobService/Train")
    assert auth.guarded("/dcnr.v1.PNodeService/Drain")
    for open_method in (
        "/dcnr.v1.PNodeService/Register",
        "/dcnr.v1.PNodeService/Heartbeat",
        "/dcnr.v1.PNodeService/WatchAssignments",
        "/dcnr.v1.PNodeService/Deregister",
        "/dcnr.v1.ResolutionService/Resolve",
        "/dcnr.v1.ValidationService/ReportResult",
        "/dcnr.v1.VNodeService/Forward",
        "/grpc.health.v1.Health/Check",
    ):
        assert not auth.guarded(open_method), open_method
