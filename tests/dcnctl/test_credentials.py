"""dcnctl's wording for refused credentials.

The first test pins dcnctl's exact wording against an in-process grpc.aio server with the
real AdminTokenInterceptor in front of a one-method NetworkService (dcnctl runs as a real
subprocess, in a thread, so this event loop keeps serving it); the second runs a real
`dcnr-orchestrator serve --admin-token-file`."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from grpc import aio

from api.dcnr.v1 import network_pb2, network_pb2_grpc
from controller.services import auth
from tests.dcnctl.conftest import Dcnctl
from tests.support import procs


class Networks(network_pb2_grpc.NetworkServiceServicer):
    async def ListNetworks(self, request: Any, context: Any) -> network_pb2.ListNetworksResponse:
        return network_pb2.ListNetworksResponse()


@pytest.fixture
async def guarded(tmp_path: Path) -> AsyncIterator[Dcnctl]:
    server = aio.server(interceptors=[auth.AdminTokenInterceptor({"right-token"})])
    network_pb2_grpc.add_NetworkServiceServicer_to_server(Networks(), server)  # type: ignore[abstract]
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield Dcnctl(tmp_path / "config", f"127.0.0.1:{port}")
    finally:
        await server.stop(None)


async def test_missing_wrong_and_right_tokens(guarded: Dcnctl) -> None:
    missing = await asyncio.to_thread(guarded, "get", "networks", check=False)
    assert missing.returncode == 1
    assert missing.stderr == (
        "Error from server (Unauthorized): "
        "this call needs an admin token: authorization: Bearer <token>\n"
    )
    wrong = await asyncio.to_thread(guarded, "--token", "nope", "get", "networks", check=False)
    assert wrong.returncode == 1
    assert wrong.stderr == (
        "Error from server (Forbidden): the admin token presented is not valid for this server\n"
    )
    # The token of the current context is sent too.
    await asyncio.to_thread(guarded, "config", "set-context", "lab", "--token", "right-token")
    right = await asyncio.to_thread(guarded, "get", "networks")
    assert right.stdout == ""
    assert right.stderr == "No resources found\n"


MANIFEST = """\
apiVersion: dcnr.io/v1
kind: Network
metadata: {name: tiny}
spec:
  vnodes:
    - {name: x, kind: input}
"""


def test_a_served_orchestrator_refuses_wrong_tokens_and_agents_need_none(tmp_path: Path) -> None:
    """End to end: `serve --admin-token-file` guards management calls; dcnctl says why."""
    tokens = tmp_path / "tokens"
    tokens.write_text("right-token\n")
    viewers = tmp_path / "viewers"
    viewers.write_text("viewer-token\n")
    served = procs.orchestrator(
        f"sqlite:///{tmp_path / 'state.db'}",
        extra=["--admin-token-file", str(tokens), "--read-only-token-file", str(viewers)],
    )
    with served as (_, address, _, _):
        ctl = Dcnctl(tmp_path / "config", address)
        missing = ctl("get", "networks", check=False)
        assert missing.returncode == 1
        assert missing.stderr.startswith("Error from server (Unauthorized): ")
        wrong = ctl("--token", "nope", "get", "networks", check=False)
        assert wrong.returncode == 1
        assert wrong.stderr.startswith("Error from server (Forbidden): ")
        right = ctl("--token", "right-token", "get", "networks")
        assert right.stderr == "No resources found\n"
        # A read-only token is a token like any other to dcnctl: it reads, and changes nothing.
        manifest = tmp_path / "net.yaml"
        manifest.write_text(MANIFEST)
        refused = ctl("--token", "viewer-token", "apply", "-f", str(manifest), check=False)
        assert refused.returncode == 1
        assert refused.stderr == (
            "Error from server (Forbidden): role read-only may not call "
            "/dcnr.v1.NetworkService/Apply: it changes state and needs the admin role\n"
        )
        assert ctl("--token", "viewer-token", "get", "networks", "-o", "name").stdout == ""
        ctl("--token", "right-token", "apply", "-f", str(manifest))  # the admin may
        named = ctl("--token", "viewer-token", "get", "networks", "-o", "name")
        assert named.stdout == "network.dcnr.io/tiny\n"
        assert "Traceback" not in missing.stderr + wrong.stderr
