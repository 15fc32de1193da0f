"""dcnctl's wording for refused credentials, and TLS unless --insecure.

The first test pins dcnctl's exact wording against an in-process grpc.aio server with the
real AdminTokenInterceptor in front of a one-method NetworkService (dcnctl runs as a real
subprocess, in a thread, so this event loop keeps serving it); the second runs a real
`dcnr-orchestrator serve --admin-token-file`."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from grpc import aio

from api.dcnr.v1 import network_pb2, network_pb2_grpc
from controller.services import auth
from tests.dcnctl.conftest import INSECURE_WARNING, REPO, Dcnctl
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
        yield Dcnctl(tmp_path / "config", f"127.0.0.1:{port}", insecure=True)
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
        ctl = Dcnctl(tmp_path / "config", address, insecure=True)
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


def _write_context(path: Path, server: str, **settings: Any) -> None:
    body = {
        "apiVersion": "dcnr.io/v1",
        "kind": "Config",
        "current-context": "c",
        "contexts": [{"name": "c", "server": server, **settings}],
    }
    path.write_text(yaml.safe_dump(body))


async def test_a_context_without_ca_dials_tls_and_plaintext_needs_insecure(
    guarded: Dcnctl, tmp_path: Path
) -> None:
    """kubectl's rule: no tls-ca is TLS against the default roots, never a silent plaintext.
    At a plaintext server that fails at once with the cause and the flag that would do it;
    `insecure: true` (or --insecure) connects, with one warning on stderr and none on stdout."""
    assert guarded.server is not None
    tls = Dcnctl(tmp_path / "tls-config", None, insecure=False)  # no --insecure added
    _write_context(tls.config, guarded.server, token="right-token")
    refused = await asyncio.to_thread(tls, "get", "networks", "-o", "name", check=False)
    assert refused.returncode == 1
    (line,) = refused.stderr.splitlines()
    assert line.startswith(f"error: unable to connect to the server at {guarded.server}: ")
    assert "the server does not speak TLS" in line
    assert "--insecure" in line
    assert "insecure: true" in line
    assert refused.stdout == ""

    plain = Dcnctl(tmp_path / "plain-config", None, insecure=False)
    _write_context(plain.config, guarded.server, token="right-token", insecure=True)
    for config, flags in ((plain.config, ()), (tls.config, ("--insecure",))):
        ran = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "dcnctl", *flags, "get", "networks", "-o", "name"],
            capture_output=True, text=True, env={**plain.env(), "DCNR_CONFIG": str(config)},
            cwd=REPO, timeout=60, check=False,
        )  # fmt: skip
        assert ran.returncode == 0, ran.stderr
        assert ran.stdout == ""  # machine-readable output stays clean
        warnings = INSECURE_WARNING.findall(ran.stderr)
        assert warnings == [
            f"warning: --insecure: plaintext gRPC to {guarded.server}; the token and "
            "everything else cross the network readable\n"
        ], ran.stderr
        assert ran.stderr == warnings[0] + "No resources found\n"

    # --no-insecure takes a context's plaintext back to TLS.
    back = await asyncio.to_thread(plain, "--no-insecure", "get", "networks", check=False)
    assert back.returncode == 1
    assert "the server does not speak TLS" in back.stderr


def test_get_contexts_says_tls_unless_insecure(offline: Dcnctl) -> None:
    offline("config", "set-context", "lab", "--server", "127.0.0.1:2")
    offline("config", "set-context", "local", "--server", "127.0.0.1:3", "--insecure")
    table = offline("config", "get-contexts", "--no-headers").stdout.splitlines()
    assert [row.split()[-1] for row in table] == ["tls", "plaintext"]
    body = yaml.safe_load(offline.config.read_text())
    assert body["contexts"][1] == {"name": "local", "server": "127.0.0.1:3", "insecure": True}
    offline("config", "set-context", "local", "--no-insecure")
    assert "insecure" not in yaml.safe_load(offline.config.read_text())["contexts"][1]
