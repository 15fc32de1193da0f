"""Who may speak to the driver's inbox (docs/security.md, "Identity"): over a real socket,
a result is taken only when signed by the PNode that hosts the sending slot at its epoch,
and only when a run waits for it; anything else is refused before any check, so it can
strike nobody, and is counted in dcnr_driver_results_refused by reason."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from grpc import aio

from api import identity, signed, tensors
from api.dcnr.v1 import vnode_pb2, vnode_pb2_grpc
from api.resources import pnode
from controller.runtime import clock as clocks
from controller.trust import book as trust
from tests.controller.jobs import driver_harness as harness
from tests.support import identities

XS = np.arange(1, 11, dtype=np.float64) / 10


class World:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp

    async def start(self) -> None:
        # Slot loss replica 0 (a sink) lives on PNode p1 at epoch 1.
        self.store, self.view, self.agents = await harness.cluster_of(self.tmp, XS)
        self.book = trust.TrustBook(store=self.store, clock=clocks.SystemClock())
        self.orch = harness.Orchestrator(self.store, self.view, self.tmp, "r1", book=self.book)
        await self.orch.start()

    async def strikes(self, name: str) -> int:
        await self.book.flush()
        return (await self.store.get(pnode.PNode, name)).status.trust.strikes_total

    def refused(self, reason: str) -> float:
        value = self.orch.metrics.registry.get_sample_value(
            "dcnr_driver_results_refused_total", {"reason": reason}
        )
        return value or 0.0


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    it = World(tmp_path)
    await it.start()
    try:
        yield it
    finally:
        await it.orch.close()
        for agent in it.agents:
            await agent.close()
        await it.store.close()


def poisoned_loss(job: str = "fit") -> vnode_pb2.ForwardRequest:
    """A sink output that fails its check: whoever is found to have produced it is struck."""
    return vnode_pb2.ForwardRequest(
        job=job, step=1, network=harness.NET, sender_vnode="loss", sender_replica=0,
        sender_epoch=1, target_vnode="__driver__", attempt=1,
        tensor=tensors.encode(np.array([math.nan, math.nan])),
    )  # fmt: skip


def stolen_certificate_signer(name: str) -> signed.Signer:
    real = identities.pnode_signer(name)
    forger = signed.Signer()
    forger.update(identity.generate_key(), identity.certificate_pem(real.certificate))
    return forger


async def refused(call: Any) -> grpc.StatusCode:
    with pytest.raises(aio.AioRpcError) as caught:
        await call
    return caught.value.code()


FORGERIES = [
    pytest.param(None, grpc.StatusCode.UNAUTHENTICATED, "Unsigned", id="unsigned"),
    pytest.param(
        lambda: stolen_certificate_signer("p1"),
        grpc.StatusCode.UNAUTHENTICATED,
        "BadSignature",
        id="key-never-certified",
    ),
    pytest.param(
        lambda: identities.pnode_signer("p1", identity.Authority.create(identities.now())),
        grpc.StatusCode.UNAUTHENTICATED,
        "UnknownIssuer",
        id="another-ca",
    ),
    pytest.param(
        lambda: identities.pnode_signer("p2"),
        grpc.StatusCode.PERMISSION_DENIED,
        "NotSender",
        id="a-pnode-not-hosting-the-slot",
    ),
]


@pytest.mark.parametrize(("signer", "code", "reason"), FORGERIES)
async def test_a_forged_result_is_refused_strikes_nobody_and_is_counted(
    world: World, signer, code, reason
) -> None:
    box = world.orch.ctx.results.inbox.open(
        job="fit", network=harness.NET, attempt=1, position=1, sinks=["loss"], sources=["x"]
    )
    async with aio.insecure_channel(f"127.0.0.1:{world.orch.port}") as channel:
        stub: Any = (
            vnode_pb2_grpc.VNodeServiceStub(channel)
            if signer is None
            else identities.SignedVNodeStub(channel, signer())
        )
        assert await refused(stub.Forward(poisoned_loss())) == code
    assert world.refused(reason) == 1
    assert world.refused("CheckFailed") == 0, "never checked"
    assert (box.outputs, box.failed) == ({}, None), "nothing filed"
    assert await world.strikes("p1") == 0, "the slot's host is not struck on a stranger's word"
    # The same output from the slot's own PNode is checked and strikes it: the refusal
    # above was the identity's.
    assert await refused(world.orch.vnodes.Forward(poisoned_loss())) == (
        grpc.StatusCode.INVALID_ARGUMENT
    )
    assert await world.strikes("p1") == 1


async def test_a_result_no_run_waits_for_is_refused_before_any_check(world: World) -> None:
    """Even from the slot's own PNode: without a run waiting, nothing is checked or struck."""
    code = await refused(world.orch.vnodes.Forward(poisoned_loss(job="nobody-runs-this")))
    assert code == grpc.StatusCode.FAILED_PRECONDITION
    assert world.refused("CheckFailed") == 0
    assert await world.strikes("p1") == 0
