"""`dcnr-orchestrator serve` over TLS, as real processes on real sockets: dcnctl and agents
connect with the CA, plaintext clients are turned away with a one-line hint, mutual TLS
refuses a client without a certificate, and a certificate rotated under a running serve is
what new connections see while its agents go on heartbeating."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import grpc
import pytest
import yaml

from api.dcnr.v1 import common_pb2, pnode_pb2, pnode_pb2_grpc
from dcnr_operator import client as operator_client
from dcnr_operator import handlers as operator_handlers
from dcnr_operator import main as operator_main
from tests.support import agents, metrics, procs, wait
from tests.support import tls as tls_support

REPO = agents.REPO


class Cluster(NamedTuple):
    served: procs.Served
    pki: tls_support.Pki
    agent: agents.Agent


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """A TLS serve (no client CA) and one agent that verifies it with the CA."""
    root = tmp_path_factory.mktemp("serve-tls")
    pki = tls_support.Pki.create(root)
    tls_flags = ["--tls-cert", str(pki.paths.cert), "--tls-key", str(pki.paths.key)]
    with procs.orchestrator(f"sqlite:///{root / 'state.db'}", extra=tls_flags) as served:
        agent = agents.Agent(
            served.address,
            "agent-tls",
            root / "agent-tls",
            extra=["--tls-ca", str(pki.paths.ca), "--metrics-listen", "127.0.0.1:0"],
        )
        try:
            yield Cluster(served, pki, agent)
        finally:
            agent.stop()


def dcnctl(
    config: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    env = {"DCNR_CONFIG": str(config), "PATH": "/usr/bin:/bin", **(env or {})}
    proc = subprocess.run(
        [sys.executable, "-m", "dcnctl", *args],
        capture_output=True, text=True, env=env, cwd=REPO, timeout=60, check=False,
    )  # fmt: skip
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc


def context(path: Path, server: str, **settings: str | bool) -> Path:
    body = {
        "apiVersion": "dcnr.io/v1",
        "kind": "Config",
        "current-context": "c",
        "contexts": [{"name": "c", "server": server, **settings}],
    }
    path.write_text(yaml.safe_dump(body))
    return path


def test_dcnctl_with_the_ca_gets_pnodes_and_without_it_is_told_to_use_tls(
    cluster: Cluster, tmp_path: Path
) -> None:
    ca = str(cluster.pki.paths.ca)
    secure = context(tmp_path / "tls", cluster.served.address, **{"tls-ca": ca})
    listed = wait.until_sync(
        lambda: dcnctl(secure, "get", "pnodes"),
        within=30,
        what="agent-tls listed over TLS",
        accept=lambda proc: proc.returncode == 0 and "agent-tls" in proc.stdout,
    )
    assert "Ready" in listed.stdout

    # tls-server-name is the name checked: one the certificate lacks is refused, with a hint.
    renamed = context(
        tmp_path / "renamed",
        cluster.served.address,
        **{"tls-ca": ca, "tls-server-name": "dcnr.example.org"},
    )
    misnamed = dcnctl(renamed, "get", "pnodes")
    assert misnamed.returncode == 1
    assert "set tls-server-name to a name it carries" in misnamed.stderr

    # No tls-ca is still TLS, verified against gRPC's default roots: a private CA is not
    # among them, and the hint says where to give it ...
    bare = context(tmp_path / "bare", cluster.served.address)
    untrusted = dcnctl(bare, "get", "pnodes")
    assert untrusted.returncode == 1
    (line,) = untrusted.stderr.strip().splitlines()
    assert line.startswith(f"error: unable to connect to the server at {cluster.served.address}")
    assert "not signed by a CA trusted by default" in line, line
    assert "tls-ca" in line
    # ... unless the default roots are made to hold it, as gRPC's environment variable does.
    roots = {"GRPC_DEFAULT_SSL_ROOTS_FILE_PATH": ca, "GRPC_VERBOSITY": "ERROR"}
    trusted = dcnctl(bare, "get", "pnodes", env=roots)
    assert trusted.returncode == 0, trusted.stderr
    assert "agent-tls" in trusted.stdout
    assert trusted.stderr == ""  # TLS: no plaintext warning

    plain = dcnctl(context(tmp_path / "plain", cluster.served.address, insecure=True),
                   "get", "pnodes")  # fmt: skip
    assert plain.returncode == 1
    warning, line = plain.stderr.strip().splitlines()
    assert warning.startswith("warning: --insecure: plaintext gRPC to ")
    assert line.startswith(f"error: unable to connect to the server at {cluster.served.address}")
    assert "it may require TLS (drop --insecure" in line


def test_dcnctl_with_tls_at_a_plaintext_server_is_told_so(cluster: Cluster, tmp_path: Path) -> None:
    with procs.orchestrator(f"sqlite:///{tmp_path / 'plain.db'}") as plain:
        config = context(tmp_path / "c", plain.address, **{"tls-ca": str(cluster.pki.paths.ca)})
        proc = dcnctl(config, "get", "pnodes")
    assert proc.returncode == 1
    (line,) = proc.stderr.strip().splitlines()
    assert "the server does not speak TLS" in line, line


def _heartbeats_ok(agent: agents.Agent) -> float:
    assert agent.metrics_port is not None
    samples = metrics.scrape(agent.metrics_port)
    return metrics.by_label(samples, "dcnr_agent_heartbeats_total", "result").get("ok", 0.0)


def test_a_rotated_certificate_is_served_to_new_connections_while_agents_heartbeat(
    cluster: Cluster,
) -> None:
    address, ca = cluster.served.address, cluster.pki.paths.ca
    before = tls_support.peer_serial(address, ca)
    wait.until_sync(
        lambda: _heartbeats_ok(cluster.agent), within=30, what="a first heartbeat over TLS"
    )
    rotated = cluster.pki.rotate_server()
    assert rotated != before
    assert tls_support.peer_serial(address, ca) == rotated  # no restart
    at_rotation = _heartbeats_ok(cluster.agent)
    wait.until_sync(
        lambda: _heartbeats_ok(cluster.agent),
        within=30,
        what="heartbeats after the rotation",
        accept=lambda ok: ok >= at_rotation + 2,
    )
    assert cluster.served.proc.poll() is None
    assert "TLS certificate reloaded" in cluster.served.log.read_text()


def _list_pnodes(address: str, credentials: grpc.ChannelCredentials) -> list[bytes]:
    with grpc.secure_channel(address, credentials) as channel:
        reply = pnode_pb2_grpc.PNodeServiceStub(channel).ListPNodes(
            pnode_pb2.ListPNodesRequest(header=common_pb2.RequestHeader()), timeout=10
        )
    return [item.json for item in reply.items]


def test_mutual_tls_refuses_a_client_without_a_certificate(tmp_path: Path) -> None:
    pki = tls_support.Pki.create(tmp_path)
    flags = ["--tls-cert", str(pki.paths.cert), "--tls-key", str(pki.paths.key),
             "--tls-client-ca", str(pki.paths.ca)]  # fmt: skip
    cert, key, _ = pki.issue("agent-m", client=True)
    ca = pki.paths.ca.read_bytes()
    with procs.orchestrator(f"sqlite:///{tmp_path / 'state.db'}", extra=flags) as served:
        with pytest.raises(grpc.RpcError) as caught:
            _list_pnodes(served.address, grpc.ssl_channel_credentials(ca))
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        agent = agents.Agent(
            served.address, "agent-m", tmp_path / "agent-m",
            extra=["--tls-ca", str(pki.paths.ca), "--tls-cert", str(cert), "--tls-key", str(key)],
        )  # fmt: skip
        try:
            with_cert = grpc.ssl_channel_credentials(ca, key.read_bytes(), cert.read_bytes())
            wait.until_sync(
                lambda: _list_pnodes(served.address, with_cert),
                within=30,
                what="agent-m registered over mutual TLS",
                accept=lambda items: any(b'"agent-m"' in item for item in items),
            )
            config = context(
                tmp_path / "c", served.address,
                **{"tls-ca": str(pki.paths.ca), "tls-cert": str(cert), "tls-key": str(key)},
            )  # fmt: skip
            assert "agent-m" in dcnctl(config, "get", "pnodes").stdout
            only_ca = context(tmp_path / "n", served.address, **{"tls-ca": str(pki.paths.ca)})
            no_cert = dcnctl(only_ca, "get", "pnodes")
            assert no_cert.returncode == 1
            assert len(no_cert.stderr.strip().splitlines()) == 1, no_cert.stderr
            assert "may want a client certificate" in no_cert.stderr
        finally:
            agent.stop()


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        args, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("flags", "says"),
    [
        ((), "serve needs --tls-cert FILE and --tls-key FILE (TLS), or --insecure"),
        (("--insecure", "--tls-cert", "c.pem"), "--insecure and --tls-cert contradict"),
        (("--tls-cert", "c.pem"), "--tls-cert needs --tls-key"),
        (("--tls-cert", "/nowhere/c.pem", "--tls-key", "/nowhere/k.pem"),
         "--tls-cert /nowhere/c.pem: no such file"),
    ],
)  # fmt: skip
def test_serve_without_a_usable_transport_is_a_usage_error(
    tmp_path: Path, flags: tuple[str, ...], says: str
) -> None:
    result = _run(
        procs.script("dcnr-orchestrator"), "serve", "--store", f"sqlite:///{tmp_path / 's.db'}",
        "--listen", "127.0.0.1:0", *flags,
    )  # fmt: skip
    assert result.returncode == 2
    assert says in result.stderr
    assert "Traceback" not in result.stderr


def test_an_agent_needs_a_ca_or_insecure(tmp_path: Path) -> None:
    result = _run(procs.script("dcnr-agent"), "--orchestrator", "127.0.0.1:1")
    assert result.returncode == 2
    assert "--tls-ca FILE is required" in result.stderr
    assert "--insecure" in result.stderr
    missing = _run(
        procs.script("dcnr-agent"), "--orchestrator", "127.0.0.1:1", "--listen", "127.0.0.1:0",
        "--state-dir", str(tmp_path), "--tls-ca", str(tmp_path / "ca.pem"),
    )  # fmt: skip
    assert missing.returncode == 2
    assert f"--tls-ca {tmp_path / 'ca.pem'}: no such file" in missing.stderr
    assert "Traceback" not in missing.stderr


async def test_the_operator_reaches_a_tls_serve_with_its_ca(cluster: Cluster) -> None:
    ca = cluster.pki.paths.ca
    target = operator_client.Target(server=cluster.served.address, tls_ca=ca)
    c = operator_client.Client(target)
    try:
        assert await operator_handlers.get_network(c, "absent") is None  # NOT_FOUND, over TLS
    finally:
        await c.close()
    # Without the CA it is TLS against gRPC's default roots, which lack the test CA; with
    # --insecure it is plaintext, which a TLS serve closes. Either way a transport error
    # kopf retries, not a refusal, naming the cause.
    for target, says in (
        (operator_client.Target(server=cluster.served.address), "not signed by a CA trusted"),
        (operator_client.Target(server=cluster.served.address, insecure=True), "require TLS"),
    ):
        refused = operator_client.Client(target)
        try:
            with pytest.raises(operator_client.Unreachable, match=says):
                await operator_handlers.get_network(refused, "absent")
        finally:
            await refused.close()


async def test_the_operator_dials_tls_unless_insecure() -> None:
    """No silent plaintext: with no TLS flag at all the operator still dials TLS, so a
    plaintext orchestrator fails at once with the flag to give; --insecure connects."""
    server = grpc.aio.server()  # plaintext, and no services: any call is UNIMPLEMENTED
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    address = f"127.0.0.1:{port}"
    try:
        args = operator_main.parser().parse_args(["--server", address])
        c = operator_client.Client(operator_main.target(args))
        try:
            with pytest.raises(operator_client.Unreachable) as caught:
                await operator_handlers.get_network(c, "absent")
        finally:
            await c.close()
        assert "does not speak TLS" in str(caught.value)
        assert "--insecure" in str(caught.value)
        assert address in str(caught.value)
        args = operator_main.parser().parse_args(["--server", address, "--insecure"])
        plain = operator_client.Client(operator_main.target(args))
        try:
            # Plaintext reaches it: the answer is the server's (no NetworkService here).
            with pytest.raises(grpc.aio.AioRpcError) as answered:
                await operator_handlers.get_network(plain, "absent")
            assert answered.value.code() == grpc.StatusCode.UNIMPLEMENTED
        finally:
            await plain.close()
    finally:
        await server.stop(None)


@pytest.mark.parametrize("flag", ["--tls-ca", "--tls-server-name"])
def test_the_operator_refuses_insecure_with_a_tls_flag(
    flag: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert operator_main.main(["--server", "127.0.0.1:1", "--insecure", flag, "x"]) == 2
    err = capsys.readouterr().err
    assert f"--insecure and {flag}" in err, err
    assert "contradict" in err


def test_the_operator_names_a_missing_tls_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "ca.pem"
    assert operator_main.main(["--server", "127.0.0.1:1", "--tls-ca", str(missing)]) == 2
    assert f"--tls-ca {missing}: no such file" in capsys.readouterr().err
