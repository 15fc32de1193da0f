"""The contract is enough (issue 11): a PNode written from the .proto files and a CA bundle
alone (`proto_only_pnode.py`, which imports nothing of ours but the generated modules)
registers with a real TLS `serve`, heartbeats, hosts a VNode and exchanges signed tensors
with the job driver; without the right identity it can do none of it.

One cluster for the module: `dcnr-orchestrator serve` over TLS and no real agent. Two
proto-only PNodes, each with room for one VNode: `honest`, hosting the lone relu VNode of
network `solo`, and `forger`, hosting the one of `forged`, which signs its results with a
key the identity CA never certified."""

from __future__ import annotations

import ast
import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import grpc
import numpy as np
import pytest
from cryptography import x509
from grpc import aio

from api import tensors
from api.dcnr.v1 import (
    common_pb2,
    job_pb2,
    job_pb2_grpc,
    network_pb2,
    network_pb2_grpc,
    pnode_pb2,
    resolve_pb2,
    resolve_pb2_grpc,
)
from tests.integration import cluster as cluster_support
from tests.integration import proto_only_pnode
from tests.support import agents, identities, metrics, procs, wait
from tests.support import tls as tls_support

pytestmark = pytest.mark.slow

CLIENT = Path(proto_only_pnode.__file__)
HEADER = common_pb2.RequestHeader(api_version="dcnr.io/v1", client_name="proto-only-test")
#: Room for exactly one VNode of the default resources (100m, 64Mi).
ONE_VNODE = ["--cpu-millis", "100", "--memory-bytes", str(64 * 2**20)]


def manifest(name: str) -> dict[str, Any]:
    """A network of one relu VNode: no parameters, source and sink at once."""
    return {
        "apiVersion": "dcnr.io/v1",
        "kind": "Network",
        "metadata": {"name": name},
        "spec": {"vnodes": [{"name": "act", "kind": "relu"}]},
    }


class PNodeProcess(NamedTuple):
    proc: subprocess.Popen[str]
    name: str
    address: str
    log: Path


class Cluster(NamedTuple):
    served: procs.Served
    store_url: str
    ca: Path
    #: The identity CA serve was given (the test's, `identities.ca_flags`): the client
    #: learns it from RegisterResponse; the test uses it to look at the data plane's TLS.
    identity_ca: Path
    honest: PNodeProcess
    forger: PNodeProcess


def start_pnode(orchestrator: str, ca: Path, name: str, root: Path, *extra: str) -> PNodeProcess:
    log = root / f"{name}.log"
    with log.open("ab") as err:
        proc = subprocess.Popen(
            [
                sys.executable, str(CLIENT), "--orchestrator", orchestrator, "--ca", str(ca),
                "--name", name, *ONE_VNODE, *extra,
            ],
            stdout=subprocess.PIPE, stderr=err, text=True, cwd=agents.REPO,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )  # fmt: skip
    try:
        line = procs.read_line(proc)
    except AssertionError as exc:
        procs.stop(proc)
        raise AssertionError(f"{exc}\n{log.read_text(errors='replace')[-3000:]}") from None
    words = line.split()
    assert words[:2] == ["proto-only-pnode:", name], line
    return PNodeProcess(proc, name, words[-1], log)


def apply_and_place(channel: grpc.Channel, network: str, pnode: PNodeProcess) -> None:
    """Apply `network` and wait until its VNode resolves to `pnode` and `pnode` has the
    assignment (resolution may answer a moment before the PNode hears of its work; the
    driver retries the PNode's NOT_FOUND until its deadline, but a placed PNode keeps each
    Infer here to one attempt)."""
    networks = network_pb2_grpc.NetworkServiceStub(channel)
    document = common_pb2.ResourceDocument(
        kind="Network", json=json.dumps(manifest(network)).encode()
    )
    networks.Apply(network_pb2.ApplyRequest(header=HEADER, document=document), timeout=30)
    resolution = resolve_pb2_grpc.ResolutionServiceStub(channel)

    def hosts() -> list[str]:
        try:
            reply = resolution.Resolve(
                resolve_pb2.ResolveRequest(header=HEADER, network=network, vnode="act"),
                timeout=10,
            )
        except grpc.RpcError as exc:
            return [f"{exc.code().name}: {exc.details()}"]
        return [e.pnode_id for e in reply.endpoints.endpoints]

    wait.until_sync(
        hosts, within=30, what=f"{network}/act on {pnode.name}",
        accept=lambda h: h == [pnode.name], every=0.05,
    )  # fmt: skip
    wait.until_sync(
        pnode.log.read_text, within=30, what=f"{pnode.name} told to host {network}/act",
        accept=lambda text: f" {network}/act@" in text, every=0.05,
    )  # fmt: skip


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    root = tmp_path_factory.mktemp("proto-only")
    pki = tls_support.Pki.create(root)
    flags = [
        "--tls-cert", str(pki.paths.cert), "--tls-key", str(pki.paths.key),
        "--metrics-listen", "127.0.0.1:0", *identities.ca_flags(root),
    ]  # fmt: skip
    started: list[PNodeProcess] = []
    store_url = f"sqlite:///{root / 'state.db'}"
    with procs.orchestrator(store_url, extra=flags) as served:
        channel = grpc.secure_channel(
            served.address, grpc.ssl_channel_credentials(pki.paths.ca.read_bytes())
        )
        try:
            started.append(start_pnode(served.address, pki.paths.ca, "honest", root))
            apply_and_place(channel, "solo", started[0])
            # `honest` is full now, so the forger's network can only go to the forger.
            started.append(start_pnode(served.address, pki.paths.ca, "forger", root, "--forge"))
            apply_and_place(channel, "forged", started[1])
            yield Cluster(
                served, store_url, pki.paths.ca, root / "identity-ca.pem", started[0], started[1]
            )
        finally:
            channel.close()
            for pnode in started:
                procs.stop(pnode.proc)


def secure(cluster: Cluster) -> aio.Channel:
    return aio.secure_channel(
        cluster.served.address, grpc.ssl_channel_credentials(cluster.ca.read_bytes())
    )


async def infer(channel: aio.Channel, network: str, x: np.ndarray, *, seconds: float) -> Any:
    request = job_pb2.InferRequest(
        header=HEADER,
        network=network,
        tensors=job_pb2.NamedTensors(tensors={"act": tensors.encode(x)}),
    )
    return await job_pb2_grpc.JobServiceStub(channel).Infer(request, timeout=seconds)


def _strikes(samples: metrics.Samples) -> float:
    return metrics.by_label(samples, "dcnr_validation_checks_total", "result").get("failed", 0.0)


async def test_infer_returns_relu_computed_by_the_proto_only_pnode(cluster: Cluster) -> None:
    x = np.array([[-2.5, 0.0, 1.25], [3.0, -0.5, 7.0]], dtype=np.float32)
    async with secure(cluster) as channel:
        reply = await infer(channel, "solo", x, seconds=20)
    out = tensors.decode(reply.outputs["act"])
    assert out.dtype == np.float32
    assert np.array_equal(out, np.maximum(x, 0)), out
    # The PNode logs the driver's acceptance once its Forward returns, which can be after
    # the driver has already answered Infer: poll the log rather than read it once.
    await wait.until(
        cluster.honest.log.read_text,
        within=10,
        what="honest told its result was accepted",
        accept=lambda text: "result of infer-" in text and "accepted by the driver" in text,
    )
    # It served the driver over TLS with the identity certificate Register gave it.
    shown = await asyncio.to_thread(
        tls_support.peer_certificate, cluster.honest.address, cluster.identity_ca,
        server_name="honest.pnode.dcnr",
    )  # fmt: skip
    san = shown.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == ["spiffe://dcnr/pnode/honest"]


async def test_registering_without_a_csr_is_refused_naming_csr(cluster: Cluster) -> None:
    node = proto_only_pnode.ProtoOnlyPNode(
        cluster.served.address, cluster.ca.read_bytes(), name="no-csr",
        cpu_millis=100, memory_bytes=64 * 2**20,
    )  # fmt: skip
    try:
        node.address = "127.0.0.1:9"
        with pytest.raises(aio.AioRpcError) as refused:
            await node.register(with_csr=False)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "csr" in (refused.value.details() or ""), refused.value.details()
    finally:
        await node.close()


async def test_a_result_signed_with_an_uncertified_key_is_refused_and_strikes_nobody(
    cluster: Cluster,
) -> None:
    port = cluster.served.metrics_port
    assert port is not None
    before = await asyncio.to_thread(metrics.scrape, port)

    def refused(samples: metrics.Samples) -> float:
        return metrics.by_label(samples, "dcnr_driver_results_refused_total", "reason").get(
            "UnknownIssuer", 0.0
        )

    x = np.array([-1.0, 2.0], dtype=np.float32)
    async with secure(cluster) as channel:
        call = asyncio.ensure_future(infer(channel, "forged", x, seconds=5))
        after = await wait.until(
            lambda: asyncio.to_thread(metrics.scrape, port),
            within=20,
            what="the forged result refused as UnknownIssuer",
            accept=lambda now: refused(now) > refused(before),
            every=0.1,
        )
        with pytest.raises(aio.AioRpcError) as failed:
            await call
    assert failed.value.code() != grpc.StatusCode.OK
    await wait.until(
        cluster.forger.log.read_text,
        within=10,
        what="the forger told of the refusal",
        accept=lambda text: "UNAUTHENTICATED" in text and "refused by the driver" in text,
    )
    assert _strikes(after) == _strikes(before) == 0
    pnodes, _, _ = await cluster_support.read_state(cluster.store_url)
    struck = {p.name: p.status.trust.strikes_total for p in pnodes}
    assert set(struck) >= {"honest", "forger"}
    assert {name: n for name, n in struck.items() if n} == {}


async def test_a_heartbeat_without_the_credential_is_unauthenticated(cluster: Cluster) -> None:
    node = proto_only_pnode.ProtoOnlyPNode(
        cluster.served.address, cluster.ca.read_bytes(), name="stranger",
        cpu_millis=100, memory_bytes=64 * 2**20,
    )  # fmt: skip
    try:
        node.address = "127.0.0.1:9"
        await node.register()
        credential = node.credential
        for wrong in ("", "not-" + credential):
            node.credential = wrong
            with pytest.raises(aio.AioRpcError) as refused:
                await node.heartbeat()
            assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED, wrong
        node.credential = credential
        reply = await node.heartbeat()
        assert reply.lease_state == pnode_pb2.LEASE_STATE_ACTIVE
    finally:
        await node.close()


#: What the client may import: the generated contract, grpcio, cryptography and numpy.
ALLOWED_TOP = {"grpc", "numpy", "cryptography"}


def foreign_imports(source: str) -> list[str]:
    """Imports of `source` that are neither the standard library, the allowed third-party
    packages, nor the generated modules api.dcnr.v1.*_pb2 / *_pb2_grpc."""

    def generated(module: str) -> bool:
        return module.startswith("api.dcnr.v1.") and module.endswith(("_pb2", "_pb2_grpc"))

    def allowed(module: str) -> bool:
        top = module.split(".")[0]
        return top in sys.stdlib_module_names or top in ALLOWED_TOP or generated(module)

    found: list[str] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names if not allowed(a.name)]
        elif isinstance(node, ast.ImportFrom):
            module = "." * node.level + (node.module or "")
            if node.level or module == "__future__":
                found += [] if module == "__future__" else [module]
            elif module == "api.dcnr.v1":
                found += [
                    f"{module}.{a.name}" for a in node.names if not generated(f"{module}.{a.name}")
                ]
            elif not allowed(module):
                found.append(module)
    return found


def test_the_client_imports_only_the_generated_contract() -> None:
    assert foreign_imports(CLIENT.read_text()) == []
    # The check itself sees what it must refuse.
    assert foreign_imports(
        "from api import identity\nimport api.tensors\nfrom api.dcnr.v1 import common_pb2, x\n"
        "from . import cluster\nimport agent.vnode\n"
    ) == ["api", "api.tensors", "api.dcnr.v1.x", ".", "agent.vnode"]
