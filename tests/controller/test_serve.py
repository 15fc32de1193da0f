"""`dcnr-orchestrator serve` as a real process over real sockets: health, reflection,
UNIMPLEMENTED for RPCs later issues fill in, graceful SIGTERM, clear startup errors."""

from __future__ import annotations

import asyncio
import datetime as dt
import signal
import socket
import subprocess
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from api import identity
from api.resources import identity_ca
from store import sqlite
from tests.support import procs

NOW = dt.datetime.now(dt.UTC)


@pytest.fixture
def served(tmp_path: Path):
    with procs.orchestrator(f"sqlite:///{tmp_path / 'state.db'}") as served:
        yield served


def _services(address: str) -> list[str]:
    with grpc.insecure_channel(address) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        responses = list(stub.ServerReflectionInfo(iter([request]), timeout=10))
    return sorted(s.name for s in responses[0].list_services_response.service)


def test_health_reports_serving_for_the_server_and_every_service(served) -> None:
    address = served.address
    names = [n for n in _services(address) if n.startswith("dcnr.v1.")]
    assert names, "reflection lists no dcnr.v1 service"
    with grpc.insecure_channel(address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for name in ["", *names]:
            reply = health.Check(health_pb2.HealthCheckRequest(service=name), timeout=10)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING, name
        with pytest.raises(grpc.RpcError) as caught:
            health.Check(health_pb2.HealthCheckRequest(service="dcnr.v1.NoSuchService"), timeout=10)
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND


def test_reflection_lists_the_whole_contract(served) -> None:
    address = served.address
    names = _services(address)
    assert "grpc.health.v1.Health" in names
    from api.dcnr.v1 import __path__ as generated  # noqa: F401 - the contract must be importable

    expected = {
        "dcnr.v1.PNodeService",
        "dcnr.v1.NetworkService",
        "dcnr.v1.JobService",
        "dcnr.v1.ResolutionService",
        "dcnr.v1.ValidationService",
    }
    assert expected <= set(names)


def test_every_rpc_answers_an_empty_request_with_a_clear_status(served) -> None:
    """Every unary method refuses an empty request with a status naming the problem:
    never UNKNOWN or INTERNAL, and none is left UNIMPLEMENTED."""
    from google.protobuf import descriptor_pool

    from controller.services import catalog

    address = served.address
    pool = descriptor_pool.Default()
    codes: dict[str, grpc.StatusCode] = {}
    with grpc.insecure_channel(address) as channel:
        for full_name, _add, _servicer in catalog.generated():
            service = pool.FindServiceByName(full_name)
            for method in service.methods:
                if method.client_streaming or method.server_streaming:
                    continue
                call = channel.unary_unary(
                    f"/{full_name}/{method.name}",
                    request_serializer=lambda _: b"",
                    response_deserializer=lambda data: data,
                )
                try:
                    call(b"", timeout=10)
                    codes[method.full_name] = grpc.StatusCode.OK  # e.g. an empty list
                except grpc.RpcError as exc:
                    codes[method.full_name] = exc.code()
    assert len(codes) >= 25
    unclear = {grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL, grpc.StatusCode.UNIMPLEMENTED}
    assert not {m: c for m, c in codes.items() if c in unclear}


def test_sigterm_shuts_down_gracefully(served) -> None:
    proc = served.proc
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0
    assert "stopped" in served.log.read_text()


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [procs.script("dcnr-orchestrator"), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_bad_store_url_is_a_usage_error_naming_the_flag() -> None:
    result = _run("serve", "--store", "postgres://db/x")
    assert result.returncode == 2
    assert "--store" in result.stderr
    assert "unknown scheme 'postgres'" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("admin", "read_only", "said"),
    [
        (None, "viewer", "read-only tokens need admin tokens too"),
        ("same", "same", "a token is both an admin and a read-only token"),
        ("admin", "# no token\n", "--read-only-token-file"),
    ],
)
def test_bad_read_only_tokens_are_a_usage_error_naming_the_flag(
    tmp_path: Path, admin: str | None, read_only: str, said: str
) -> None:
    args = ["serve", "--insecure", "--store", f"sqlite:///{tmp_path / 's.db'}"]
    if admin is not None:
        (tmp_path / "admin").write_text(admin + "\n")
        args += ["--admin-token-file", str(tmp_path / "admin")]
    (tmp_path / "viewers").write_text(read_only + "\n")
    result = _run(*args, "--read-only-token-file", str(tmp_path / "viewers"))
    assert result.returncode == 2
    assert result.stderr.startswith("dcnr-orchestrator: error: --read-only-token-file: ")
    assert said in result.stderr
    assert "Traceback" not in result.stderr


def test_port_in_use_is_a_one_line_error(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = _run(
            "serve", "--store", f"sqlite:///{tmp_path / 's.db'}", "--listen", f"127.0.0.1:{port}",
            "--insecure",
        )  # fmt: skip
    assert result.returncode == 1
    assert f"127.0.0.1:{port}" in result.stderr
    assert "Traceback" not in result.stderr


def test_bad_ui_listen_is_a_usage_error_and_a_taken_port_a_one_line_error(tmp_path: Path) -> None:
    base = ("serve", "--store", f"sqlite:///{tmp_path / 's.db'}", "--insecure")
    result = _run(*base, "--ui-listen", "dashboard")
    assert result.returncode == 2
    assert result.stderr.startswith("dcnr-orchestrator: error: --ui-listen dashboard: ")
    assert "HOST:PORT" in result.stderr
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = _run(*base, "--listen", "127.0.0.1:0", "--ui-listen", f"127.0.0.1:{port}")
    assert result.returncode == 1
    assert f"--ui-listen 127.0.0.1:{port}: cannot bind" in result.stderr
    assert "Traceback" not in result.stderr


def test_driver_listen_and_a_plaintext_data_plane_are_a_usage_error(tmp_path: Path) -> None:
    result = _run(
        "serve", "--insecure", "--store", f"sqlite:///{tmp_path / 's.db'}",
        "--data-plane-insecure", "--driver-listen", "127.0.0.1:0",
    )  # fmt: skip
    assert result.returncode == 2
    assert "--driver-listen" in result.stderr
    assert "--data-plane-insecure" in result.stderr
    assert "Traceback" not in result.stderr


def test_driver_listen_port_in_use_is_a_one_line_error(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = _run(
            "serve", "--store", f"sqlite:///{tmp_path / 's.db'}", "--insecure",
            "--driver-listen", f"127.0.0.1:{port}",
        )  # fmt: skip
    assert result.returncode == 1
    assert f"--driver-listen 127.0.0.1:{port}" in result.stderr
    assert "Traceback" not in result.stderr


def test_init_store_sqlite_creates_the_database(tmp_path: Path) -> None:
    db = tmp_path / "nested" / "state.db"
    result = _run("init-store", "--store", f"sqlite:///{db}")
    assert result.returncode == 0, result.stderr
    assert db.exists()
    assert "ready" in result.stdout


def test_init_store_dynamodb_is_idempotent(moto_endpoint: str) -> None:
    store_url = f"dynamodb://initcli?region=us-east-1&endpoint={moto_endpoint}"
    first = _run("init-store", "--store", store_url)
    assert first.returncode == 0, first.stderr
    assert "created initcli-networks" in first.stdout
    second = _run("init-store", "--store", store_url)
    assert second.returncode == 0, second.stderr
    assert "exists initcli-networks" in second.stdout


def test_identity_ca_flags_go_together_and_the_key_must_be_the_cas(tmp_path: Path) -> None:
    ca, other = identity.Authority.create(NOW), identity.Authority.create(NOW)
    (tmp_path / "ca.pem").write_bytes(ca.certificate_pem)
    (tmp_path / "other-key.pem").write_bytes(other.key_pem)
    store = f"sqlite:///{tmp_path / 's.db'}"
    alone = _run(
        "serve", "--insecure", "--store", store, "--identity-ca-cert", str(tmp_path / "ca.pem")
    )
    assert alone.returncode == 2
    assert "--identity-ca-cert and --identity-ca-key go together" in alone.stderr
    mismatched = _run(
        "serve", "--insecure", "--store", store, "--identity-ca-cert", str(tmp_path / "ca.pem"),
        "--identity-ca-key", str(tmp_path / "other-key.pem"),
    )  # fmt: skip
    assert mismatched.returncode == 2
    assert "--identity-ca-cert" in mismatched.stderr
    assert "does not match its certificate" in mismatched.stderr
    assert "Traceback" not in alone.stderr + mismatched.stderr


def test_init_store_creates_the_identity_ca_once(tmp_path: Path) -> None:
    store = f"sqlite:///{tmp_path / 'state.db'}"
    first = _run("init-store", "--store", store)
    assert first.returncode == 0, first.stderr
    assert "identity CA ready (kept in the store: store access is CA access)" in first.stdout

    async def stored() -> str:
        opened = await sqlite.SqliteStore.open(tmp_path / "state.db")
        try:
            record = await opened.get(identity_ca.IdentityAuthority, identity_ca.NAME)
            return record.spec.certificate
        finally:
            await opened.close()

    created = asyncio.run(stored())
    assert _run("init-store", "--store", store).returncode == 0
    assert asyncio.run(stored()) == created, "a second init-store keeps the CA"
