"""The driver's inbox on its mutual-TLS listener (`serve --driver-listen`, docs/security.md,
"Signing and checking"): over a real socket the handshake proves the sender's identity
certificate, so a result is attributed to it without verifying its signature; the signature
is verified only when the result may become evidence (a failed check, before a strike), and
one that does not verify then is refused and strikes nobody."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from grpc import aio

from api import identity, signed, tensors
from api import tls as api_tls
from api.dcnr.v1 import vnode_pb2
from controller import server as server_mod
from controller.runtime import clock as clocks
from controller.services import driver_inbox_service
from controller.state import identity_ca
from controller.trust import book as trust
from tests.controller.jobs import driver_harness as harness
from tests.controller.jobs.test_driver_inbox_identity import (
    XS,
    World,
    poisoned_loss,
    refused,
)
from tests.support import identities

ORCHESTRATOR_NAME = identity.dns_name("orchestrator", identity.ORCHESTRATOR)


class MutualWorld(World):
    """The World of the identity tests plus the inbox's mutual-TLS listener."""

    replicas = 1

    async def start(self) -> None:
        if self.replicas == 1:
            await super().start()
        else:  # replica r of each VNode on PNode p{r+1}
            self.store, self.view, self.agents = await harness.cluster_of(
                self.tmp, XS, replicas=self.replicas, validation="replicas"
            )
            self.book = trust.TrustBook(store=self.store, clock=clocks.SystemClock())
            self.orch = harness.Orchestrator(self.store, self.view, self.tmp, "r1", book=self.book)
            await self.orch.start()
        self.server = aio.server()
        driver_inbox_service.add_to_server(
            driver_inbox_service.DriverInboxService(
                inbox=self.orch.ctx.results.inbox,
                view=self.view,
                clock=clocks.SystemClock(),
                verifier=identity.Verifier(identities.authority().certificate_pem),
                replica_id="r1",
                max_message_bytes=1 << 20,
                book=self.book,
                on_refused=self.orch.metrics.driver_refused,
                mutual_tls=True,
            ),
            self.server,
        )
        served = server_mod.InboxIdentity()
        own = identity_ca.Own.issue(identities.authority(), identities.now(), identities.HOUR)
        served.update(own, identities.authority().certificate_pem)
        self.port = self.server.add_secure_port("127.0.0.1:0", served.server_credentials())
        await self.server.start()

    def channel(self, client: signed.Signer | None) -> aio.Channel:
        """As an agent dials it: presenting `client`'s identity (None: no certificate)."""
        ca = identities.authority().certificate_pem
        credentials = (
            client.client_credentials(ca)
            if client is not None
            else grpc.ssl_channel_credentials(root_certificates=ca)
        )
        return aio.secure_channel(
            f"127.0.0.1:{self.port}",
            credentials,
            [(api_tls.TARGET_NAME_OVERRIDE, ORCHESTRATOR_NAME)],
        )

    def open(self) -> Any:
        return self.orch.ctx.results.inbox.open(
            job="fit", network=harness.NET, attempt=1, position=1, sinks=["loss"], sources=["x"]
        )


@pytest.fixture
async def world(tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[MutualWorld]:
    it = MutualWorld(tmp_path)
    it.replicas = getattr(request, "param", 1)
    await it.start()
    try:
        yield it
    finally:
        await it.server.stop(None)
        await it.orch.close()
        for agent in it.agents:
            await agent.close()
        await it.store.close()


def loss(value: float) -> vnode_pb2.ForwardRequest:
    return vnode_pb2.ForwardRequest(
        job="fit", step=1, network=harness.NET, sender_vnode="loss", sender_replica=0,
        sender_epoch=1, target_vnode="__driver__", attempt=1,
        tensor=tensors.encode(np.array([value, value])),
    )  # fmt: skip


async def forward_with_signature(
    channel: aio.Channel, signer: signed.Signer, request: Any, signature: bytes
) -> vnode_pb2.ForwardResponse:
    """A Forward carrying `signer`'s certificate but `signature` (not necessarily its)."""
    call = channel.unary_unary(
        signed.full_method("Forward"),
        request_serializer=lambda body: body,
        response_deserializer=vnode_pb2.ForwardResponse.FromString,
    )
    metadata = (
        (identity.SIGNATURE_METADATA, signature),
        (identity.CERTIFICATE_METADATA, signer.certificate),
    )
    response: vnode_pb2.ForwardResponse = await call(
        request.SerializeToString(), metadata=metadata, timeout=10.0
    )
    return response


async def test_a_result_over_mutual_tls_is_taken_without_verifying_its_signature(
    world: MutualWorld,
) -> None:
    """The handshake proved p1; a result that passes its checks is filed with its signature
    kept but not verified (what lazy verification saves: one ECDSA verification each)."""
    box = world.open()
    p1 = identities.pnode_signer("p1")
    async with world.channel(p1) as channel:
        answer = await forward_with_signature(channel, p1, loss(0.5), b"not a signature")
    assert not answer.duplicate
    assert set(box.outputs) == {"loss"}
    assert world.refused("BadSignature") == 0


async def test_a_failed_check_strikes_only_when_its_signature_verifies(
    world: MutualWorld,
) -> None:
    """A poisoned output with a signature that does not verify is refused Unauthenticated
    (BadSignature), never filed as a failure and strikes nobody; the same output properly
    signed is checked, refused CheckFailed and strikes its PNode."""
    box = world.open()
    p1 = identities.pnode_signer("p1")
    async with world.channel(p1) as channel:
        with pytest.raises(aio.AioRpcError) as caught:
            await forward_with_signature(channel, p1, poisoned_loss(), b"not a signature")
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert world.refused("BadSignature") == 1
        assert (box.outputs, box.failed) == ({}, None), "nothing filed, the step not failed"
        assert await world.strikes("p1") == 0, "no strike without the producer's signature"
        stub = identities.SignedVNodeStub(channel, p1)
        assert await refused(stub.Forward(poisoned_loss())) == grpc.StatusCode.INVALID_ARGUMENT
    assert world.refused("CheckFailed") == 1
    assert box.failed is not None
    assert await world.strikes("p1") == 1


async def test_a_pnode_cannot_speak_for_another_over_mutual_tls(world: MutualWorld) -> None:
    """The connection is p2's: a result signed by p1 (the slot's host) is verified at once
    and refused NotSender; p2's own is refused NotSender too (it does not host the slot).
    Neither is checked and nobody is struck."""
    world.open()
    p1, p2 = identities.pnode_signer("p1"), identities.pnode_signer("p2")
    async with world.channel(p2) as channel:
        for signer in (p1, p2):
            stub = identities.SignedVNodeStub(channel, signer)
            code = await refused(stub.Forward(poisoned_loss()))
            assert code == grpc.StatusCode.PERMISSION_DENIED
    assert world.refused("NotSender") == 2
    assert world.refused("CheckFailed") == 0
    assert await world.strikes("p1") == 0


async def test_a_client_without_an_identity_certificate_fails_the_handshake(
    world: MutualWorld,
) -> None:
    world.open()
    async with world.channel(None) as channel:
        stub = identities.SignedVNodeStub(channel, identities.pnode_signer("p1"))
        assert await refused(stub.Forward(poisoned_loss())) == grpc.StatusCode.UNAVAILABLE
    assert await world.strikes("p1") == 0


@pytest.mark.parametrize("world", [2], indirect=True)
async def test_a_result_that_will_be_compared_is_verified_on_arrival(world: MutualWorld) -> None:
    """Replicas of a sink are compared, and a loser is struck on its own signed words: so
    over mutual TLS a replicated sink's output is verified before it is filed. One whose
    signature fails is refused (BadSignature) and not filed; the same, properly signed, is."""
    box = world.orch.ctx.results.inbox.open(
        job="fit", network=harness.NET, attempt=1, position=1, sinks={"loss": 2},
        sources={"x": 2},
    )  # fmt: skip
    p1 = identities.pnode_signer("p1")
    async with world.channel(p1) as channel:
        with pytest.raises(aio.AioRpcError) as caught:
            await forward_with_signature(channel, p1, loss(0.5), b"not a signature")
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert box.results == {}, "nothing filed for the comparison"
        answer = await identities.SignedVNodeStub(channel, p1).Forward(loss(0.5))
    assert not answer.duplicate
    assert set(box.results.get("loss", {})) == {0}
    assert world.refused("BadSignature") == 1
