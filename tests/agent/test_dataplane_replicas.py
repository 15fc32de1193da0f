"""Redundant replicas over real sockets: the network of test_dataplane.py (x, y → fc → loss)
with fc on two DataPlane servers, one of which lies (its kinds' outputs are perturbed
slightly, as tests/support/liar.py does to a whole agent: every check passes, only the
comparison catches it). The loss replica compares, reports the 1-1 split as disputed and
computes nothing; after a tiebreaker replica of fc joins on a third server and the driver
rolls back, 2-1 settles it, the liar is reported as the loser, and the step does exactly
the honest math."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from grpc import aio

from agent import blobs, dataplane, keys, peers, vnode
from api import tensors
from api.dcnr.v1 import (
    common_pb2,
    pnode_pb2,
    resolve_pb2,
    resolve_pb2_grpc,
    validation_pb2,
    vnode_pb2,
    vnode_pb2_grpc,
)
from tests.agent import test_dataplane as base
from tests.agent.test_dataplane import data_file  # noqa: F401
from tests.support import identities, liar, wait

NET = base.NET
LIAR_EPOCH = 5
TIEBREAKER_EPOCH = 6


class Driver(base.Driver):
    """The test driver, resolving every replica of a VNode."""

    def __init__(self) -> None:
        super().__init__()
        self.replicas: dict[str, list[resolve_pb2.Endpoint]] = {}

    async def Resolve(self, request, context):
        return resolve_pb2.ResolveResponse(
            endpoints=resolve_pb2.VNodeEndpoints(
                network=request.network,
                vnode=request.vnode,
                endpoints=self.replicas.get(request.vnode, []),
            )
        )


class Reports:
    """A Reporter that keeps what it was asked to send."""

    def __init__(self) -> None:
        self.sent: list[validation_pb2.ReportResultRequest] = []

    async def report(self, request: validation_pb2.ReportResultRequest) -> None:
        self.sent.append(request)

    async def quorum(self, count: int) -> list[validation_pb2.ReportResultRequest]:
        """The quorum reports, once there are at least `count` (each is sent on a task of its
        own)."""
        return await wait.until(
            lambda: [r for r in self.sent if r.checks[0].check == "quorum"],
            within=5,
            what=f"{count} quorum reports",
            accept=lambda found: len(found) >= count,
        )


def lying(make: dataplane.KindFactory) -> dataplane.KindFactory:
    def build(a: pnode_pb2.Assignment) -> Any:
        kind = make(a)
        honest = kind.forward

        def forward(inputs: Any, params: Any, *, training: bool) -> Any:
            output, cache = honest(inputs, params, training=training)
            return liar.perturb(output, "slight"), cache

        kind.forward = forward  # type: ignore[method-assign]
        return kind

    return build


def assignment(vnode: str, kind: str, inputs: list[str], outputs: list[str], **extra: Any):
    extra.setdefault("epoch", 3)
    return pnode_pb2.Assignment(
        network=NET, vnode=vnode, kind=kind, inputs=inputs, outputs=outputs,
        allocation=f"{NET}.{vnode}.{extra.get('replica', 0)}", **extra,
    )  # fmt: skip


def assignments(fc_replicas: int, ref: Any) -> list[pnode_pb2.Assignment]:
    """What the first server hosts: the sources, fc replica 0, and the loss."""
    fc = {"fc": fc_replicas}
    return [
        assignment("x", "input", [], ["fc"], params_json=b'{"field": "x_train"}', data=ref,
                   neighbour_replicas=fc),
        assignment("y", "input", [], ["loss"], params_json=b'{"field": "y_train"}', data=ref),
        assignment("fc", "dense", ["x"], ["loss"], params_json=b'{"units": 3}'),
        assignment("loss", "softmax_cross_entropy", ["fc", "y"], [], neighbour_replicas=fc,
                   neighbour_kinds={"fc": "dense", "y": "input"},
                   neighbour_params_json={"fc": b'{"units": 3}'}),
    ]  # fmt: skip


@pytest.fixture
async def servers(tmp_path: Path, data_file: Path) -> AsyncIterator[dict[str, Any]]:  # noqa: F811
    driver = Driver()
    driver_server = aio.server()
    vnode_pb2_grpc.add_VNodeServiceServicer_to_server(driver, driver_server)
    resolve_pb2_grpc.add_ResolutionServiceServicer_to_server(driver, driver_server)
    driver_port = driver_server.add_insecure_port("127.0.0.1:0")
    await driver_server.start()
    orchestrators = peers.Orchestrators([f"127.0.0.1:{driver_port}"])
    closing: list[Any] = []

    async def start(kind_factory: dataplane.KindFactory) -> tuple[dataplane.DataPlane, str]:
        keeper = keys.Keeper()
        sender = peers.Peers(
            orchestrators, signer=keeper.signer, max_message_bytes=4096,
            client_ca=lambda: None,  # in-process plaintext listeners; TLS: test_dataplane_tls
            retry=peers.Retry(deadline=5),
        )  # fmt: skip
        plane = dataplane.DataPlane(
            sender=sender,
            keeper=keeper,
            blob_store=blobs.BlobStore(workdir=tmp_path),
            kind_factory=kind_factory,
            max_message_bytes=4096,
        )
        server = aio.server()
        plane.add_to_server(server)
        port = server.add_insecure_port("127.0.0.1:0")
        # Each PNode is named by its address here (`endpoint`), so is its identity.
        ca = identities.authority()
        keeper.accept(
            ca.issue_pnode(
                keeper.csr("p"), f"127.0.0.1:{port}", identities.now(), identities.HOUR
            ),
            ca.certificate_pem,
        )
        keeper.plaintext = True  # plaintext listeners: signatures verified on receipt
        await server.start()
        closing.append((server, plane, sender))
        return plane, f"127.0.0.1:{port}"

    kinds = dataplane.runtime_kinds(workdir=tmp_path, cache_dir=None, datasets={})
    planes = {name: await start(lying(kinds) if name == "liar" else kinds)
              for name in ("honest", "liar", "tiebreaker")}  # fmt: skip
    yield {
        "driver": driver,
        "planes": planes,
        "reply_to": f"127.0.0.1:{driver_port}",
        "ref": common_pb2.DataRef(url=f"file://{data_file.name}"),
        "data": data_file,
    }
    for server, plane, sender in closing:
        await server.stop(None)
        await plane.close()
        await sender.close()
    await orchestrators.close()
    await driver_server.stop(None)


#: The job driver's identity, which Restore and the sources' inputs must carry.
DRIVER_IDENTITY = identities.orchestrator_signer()


def endpoint(address: str, replica: int, epoch: int) -> resolve_pb2.Endpoint:
    return resolve_pb2.Endpoint(pnode_id=address, address=address, replica=replica, epoch=epoch)


async def restore(
    address: str, vnode: str, replica: int, epoch: int, attempt: int, counts: dict[str, int]
) -> None:
    async with aio.insecure_channel(address) as channel:
        await identities.SignedVNodeStub(channel, DRIVER_IDENTITY).Restore(
            vnode_pb2.RestoreRequest(
                job="j", step=0, network=NET, vnode=vnode, replica=replica, epoch=epoch,
                seed=base.SEED, attempt=attempt, optimizer="sgd", learning_rate=base.LR,
                neighbour_replicas=counts,
            )
        )  # fmt: skip


async def send_batch(c: dict[str, Any], attempt: int) -> None:
    honest = c["planes"]["honest"][1]
    async with aio.insecure_channel(honest) as channel:
        stub = identities.SignedVNodeStub(channel, DRIVER_IDENTITY)
        for source in ("x", "y"):
            request = base.forward(source, tensors.encode(base.BATCH), c, attempt=attempt)
            assert not (await stub.Forward(request)).duplicate


async def test_a_lying_replica_is_disputed_then_outvoted_by_a_tiebreaker(servers) -> None:
    c = servers
    driver: Driver = c["driver"]
    (honest, honest_at), (liar_plane, liar_at), (tiebreaker, tiebreaker_at) = (
        c["planes"]["honest"],
        c["planes"]["liar"],
        c["planes"]["tiebreaker"],
    )
    reports = Reports()
    honest.reporter = reports
    honest.reconcile(assignments(2, c["ref"]))
    liar_plane.reconcile([assignment("fc", "dense", ["x"], ["loss"], replica=1,
                                     epoch=LIAR_EPOCH, params_json=b'{"units": 3}')])  # fmt: skip
    for name in ("x", "y", "loss"):
        driver.replicas[name] = [endpoint(honest_at, 0, 3)]
    driver.replicas["fc"] = [endpoint(honest_at, 0, 3), endpoint(liar_at, 1, LIAR_EPOCH)]
    for name in ("x", "y", "fc", "loss"):
        await restore(honest_at, name, 0, 3, 1, {})
    await restore(liar_at, "fc", 1, LIAR_EPOCH, 1, {})

    await send_batch(c, attempt=1)
    (disputed,) = await reports.quorum(1)
    assert [(x.check, x.result) for x in disputed.checks] == [
        ("quorum", validation_pb2.CHECK_RESULT_DISPUTED)
    ]
    assert (disputed.vnode, disputed.replica, disputed.epoch, disputed.step) == ("loss", 0, 3, 1)
    assert disputed.phase == validation_pb2.COMPUTE_PHASE_FORWARD
    assert (disputed.subject_vnode, disputed.subject_replica) == ("fc", 0)

    # The tiebreaker: fc replica 2 on a third server; the loss and x now count three replicas
    # of fc (the assignment changes without rebuilding them), and the driver rolls back.
    loss = honest.instance(NET, "loss")
    honest.reconcile(assignments(3, c["ref"]))
    assert honest.instance(NET, "loss") is loss
    tiebreaker.reconcile(
        [
            assignment(
                "fc", "dense", ["x"], ["loss"], replica=2, epoch=TIEBREAKER_EPOCH,
                params_json=b'{"units": 3}',
            )
        ]
    )  # fmt: skip
    driver.replicas["fc"].append(endpoint(tiebreaker_at, 2, TIEBREAKER_EPOCH))
    plan = {"fc": 3}
    for name in ("x", "y", "loss"):
        await restore(honest_at, name, 0, 3, 2, plan if name != "y" else {})
    await restore(honest_at, "fc", 0, 3, 2, {})
    await restore(liar_at, "fc", 1, LIAR_EPOCH, 2, {})
    await restore(tiebreaker_at, "fc", 2, TIEBREAKER_EPOCH, 2, {})

    await send_batch(c, attempt=2)
    await driver.wait(1, 2)
    _, failed = await reports.quorum(2)
    assert [(x.check, x.result) for x in failed.checks] == [
        ("quorum", validation_pb2.CHECK_RESULT_FAILED)
    ]
    assert (failed.subject_vnode, failed.subject_replica, failed.subject_epoch) == (
        "fc",
        1,
        LIAR_EPOCH,
    )
    assert (failed.vnode, failed.step, failed.job) == ("loss", 1, "j")
    # The disputed attempt computed nothing; the settled one did the honest math.
    assert [(f.step, f.attempt) for f in driver.forwards] == [(1, 2)]
    params, out = base.expected_after_one_step(c["data"])
    np.testing.assert_allclose(tensors.decode(driver.forwards[0].tensor), out, rtol=1e-6)
    for plane, replica in ((honest, 0), (tiebreaker, 2)):
        fc = await _after_step_one(plane, replica)
        assert fc.params is not None
        for name, value in params.items():
            np.testing.assert_allclose(fc.params[name], value, rtol=1e-6)


async def _after_step_one(plane: dataplane.DataPlane, replica: int) -> vnode.Instance:
    """fc's replica on `plane` once the step's backward reached it (on a task of its own)."""
    fc = plane.instance(NET, "fc", replica)
    assert fc is not None
    await wait.until(
        lambda: fc.step, within=5, what=f"fc replica {replica} at step 1", accept=lambda s: s == 1
    )
    return fc
