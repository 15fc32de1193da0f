"""The data plane over mutual TLS (docs/security.md, "Transport (TLS)"): a real agent
process serves its VNodeService with its PNode identity certificate, follows renewals
without a restart, speaks to nobody who does not verify it, and to nobody who does not
present an identity certificate of the cluster's CA. One orchestrator (3-second identity
certificates, renewed by the agent's heartbeat, every 0.3 s, once 2 s have passed: never
served expired) and one agent for the module; a second pair shows the explicit plaintext
choice (`serve --data-plane-insecure`)."""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import grpc
import pytest
from cryptography import x509
from grpc import aio

from agent import peers
from api import identity, tensors
from api.dcnr.v1 import vnode_pb2
from tests.support import agents as agents_mod
from tests.support import identities, procs, wait
from tests.support import tls as tls_support

#: Renewal at 2/3 (4 s) leaves 2 s, ~6 heartbeats, before expiry: with 3 s (1 s of slack)
#: a loaded machine once let the served certificate expire before its renewal landed.
TTL = 6.0
HEARTBEAT = ["--heartbeat-interval", "0.3", "--lease-duration", "3"]


class Cluster(NamedTuple):
    ca: Path
    agent: agents_mod.Agent


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    root = tmp_path_factory.mktemp("dtls")
    flags = [*identities.ca_flags(root), "--identity-ttl", str(TTL), *HEARTBEAT]
    with (
        procs.orchestrator(f"sqlite:///{root}/state.db", extra=flags) as served,
        agents_mod.agents(served.address, root, 1) as (agent,),
    ):
        yield Cluster(root / "identity-ca.pem", agent)


def probe() -> vnode_pb2.ForwardRequest:
    """A driver's message for a VNode nobody hosts: an agent that verified the signature
    answers NOT_FOUND."""
    return vnode_pb2.ForwardRequest(
        job="probe", step=1, network="n", sender_vnode="__driver__", target_vnode="nobody",
        target_epoch=1, tensor=tensors.empty(),
    )  # fmt: skip


async def call(channel: aio.Channel) -> grpc.StatusCode:
    stub = identities.SignedVNodeStub(channel, identities.driver())
    with pytest.raises(aio.AioRpcError) as caught:
        await stub.Forward(probe(), timeout=10)
    return caught.value.code()


async def test_a_client_verifying_the_pnode_completes_a_signed_call(cluster: Cluster) -> None:
    agent = cluster.agent
    async with identities.data_plane_channel(agent.address, agent.name) as channel:
        assert await call(channel) == grpc.StatusCode.NOT_FOUND


async def test_a_plaintext_client_is_refused_at_the_handshake(cluster: Cluster) -> None:
    async with aio.insecure_channel(cluster.agent.address) as channel:
        assert await call(channel) == grpc.StatusCode.UNAVAILABLE


async def test_a_client_without_a_certificate_is_refused_at_the_handshake(
    cluster: Cluster,
) -> None:
    # Mutual TLS: the listener asks every client for an identity certificate.
    agent = cluster.agent
    async with identities.data_plane_channel(agent.address, agent.name, present=False) as channel:
        assert await call(channel) == grpc.StatusCode.UNAVAILABLE
    async with identities.data_plane_channel(agent.address, agent.name) as channel:
        assert await call(channel) == grpc.StatusCode.NOT_FOUND  # the same call, presented


async def test_a_client_certificate_from_another_ca_is_refused_at_the_handshake(
    cluster: Cluster,
) -> None:
    # The client verifies the agent as it should, but presents an identity of a CA this
    # cluster never trusted.
    agent = cluster.agent
    other = identities.orchestrator_signer(identity.Authority.create(identities.now()))
    async with identities.data_plane_channel(agent.address, agent.name, client=other) as channel:
        assert await call(channel) == grpc.StatusCode.UNAVAILABLE


async def test_a_client_expecting_another_pnode_fails_the_handshake(cluster: Cluster) -> None:
    # What a driver sees when a PNode answers at an address resolution gave another PNode.
    agent = cluster.agent
    async with identities.data_plane_channel(agent.address, "someone-else") as channel:
        assert await call(channel) == grpc.StatusCode.UNAVAILABLE
    async with identities.data_plane_channel(agent.address, agent.name) as channel:
        assert await call(channel) == grpc.StatusCode.NOT_FOUND  # the agent is fine


async def test_a_client_trusting_another_ca_fails_the_handshake(cluster: Cluster) -> None:
    # A man in the middle with a certificate of his own CA looks like this from the agent's
    # side of the mirror: the certificate does not chain to the CA the client trusts.
    other = identity.Authority.create(identities.now())
    agent = cluster.agent
    async with identities.data_plane_channel(agent.address, agent.name, other) as channel:
        assert await call(channel) == grpc.StatusCode.UNAVAILABLE


async def test_a_renewed_certificate_is_served_without_a_restart(cluster: Cluster) -> None:
    agent = cluster.agent
    name = identity.dns_name("pnode", agent.name)

    def served() -> x509.Certificate:
        return tls_support.peer_certificate(agent.address, cluster.ca, server_name=name)

    first = served()
    assert first.extensions.get_extension_for_class(
        x509.SubjectAlternativeName
    ).value.get_values_for_type(x509.DNSName) == [name]
    later = await wait.until(
        served,
        within=30,
        what="a new connection shown a renewed certificate",
        accept=lambda cert: cert.not_valid_after_utc > first.not_valid_after_utc,
        every=0.2,
    )
    assert later.serial_number != first.serial_number
    assert agent.proc.poll() is None, "renewed in place, no restart"
    async with identities.data_plane_channel(agent.address, agent.name) as channel:
        assert await call(channel) == grpc.StatusCode.NOT_FOUND


async def test_data_plane_insecure_is_plaintext_for_agents_too(tmp_path: Path) -> None:
    flags = [*identities.ca_flags(tmp_path), "--data-plane-insecure"]
    with (
        procs.orchestrator(f"sqlite:///{tmp_path}/state.db", extra=flags) as served,
        agents_mod.agents(served.address, tmp_path, 1) as (agent,),
    ):
        async with aio.insecure_channel(agent.address) as channel:
            assert await call(channel) == grpc.StatusCode.NOT_FOUND  # still signed
        async with identities.data_plane_channel(agent.address, agent.name) as channel:
            assert await call(channel) == grpc.StatusCode.UNAVAILABLE
        assert "runs the data plane plaintext" in agent.log.read_text()
    assert "--data-plane-insecure: agents serve and dial" in served.log.read_text()


def test_a_taken_listen_port_fails_before_register(tmp_path: Path) -> None:
    # The listener opens only after Register, but its port is held from the start: a taken
    # one is exit 1 naming --listen, without waiting for an orchestrator (none listens here).
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        listen = f"127.0.0.1:{taken.getsockname()[1]}"
        done = subprocess.run(
            [
                procs.script("dcnr-agent"), "--orchestrator", "127.0.0.1:1", "--insecure",
                "--listen", listen, "--state-dir", str(tmp_path),
            ],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    assert done.returncode == 1, done.stderr
    assert f"dcnr-agent: error: --listen: {listen!r}" in done.stderr


async def test_peer_channels_are_kept_and_rebuilt_on_a_new_ca_or_certificate() -> None:
    bundle = [identities.authority().certificate_pem]
    signer = identities.pnode_signer("p")
    sender = peers.Peers(
        peers.Orchestrators(["127.0.0.1:1"]),
        signer=signer,
        client_ca=lambda: bundle[0],
        max_message_bytes=4096,
    )
    try:
        first = await sender._stub("127.0.0.1:2", "q")
        await sender._stub("127.0.0.1:3", peers.DRIVER)  # the driver is no CA change
        assert await sender._stub("127.0.0.1:2", "q") is first
        assert await sender._stub("127.0.0.1:2", "r") is not first, "one channel per PNode"
        bundle[0] = identity.Authority.create(identities.now()).certificate_pem
        second = await sender._stub("127.0.0.1:2", "q")
        assert second is not first, "a new CA: a new channel"
        assert await sender._stub("127.0.0.1:2", "q") is second
        key = identity.generate_key()
        signer.update(
            key,
            identities.authority().issue_pnode(
                identity.csr_pem(key, "p"), "p", identities.now(), identities.HOUR
            ),
        )
        assert await sender._stub("127.0.0.1:2", "q") is not second, (
            "a renewed client certificate: a new channel presenting it"
        )
    finally:
        await sender.close()
