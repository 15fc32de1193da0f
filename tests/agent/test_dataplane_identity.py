"""Who may speak to an agent's data plane (docs/security.md, "Identity"): over real sockets,
forged messages are refused before anything looks at them, never checked, reported or
computed on, and counted by reason; Restore is the driver's alone.

The cluster is tests/agent/test_dataplane.py's: PNode "p" hosts x, y, fc and loss at epoch
3, and the test's driver holds the orchestrator identity of the same CA.
"""

from __future__ import annotations

import collections
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from grpc import aio

from agent import blobs, dataplane, peers, vnode
from api import identity, signed, tensors
from api.dcnr.v1 import common_pb2, vnode_pb2, vnode_pb2_grpc
from tests.agent.test_dataplane import (  # noqa: F401
    NET,
    cluster,
    data_file,
    forward,
    identity_of,
    restore_all,
    run_step,
)
from tests.agent.test_dataplane_replicas import Reports
from tests.support import identities

#: A result fc would refuse (its kind is dense with 3 units) and report: "x" sends 2 rows
#: of NaN, which fails the activation check if anyone ever looked at it.
POISON = tensors.encode(np.full((4, 4), np.nan, np.float32))


def forged_from_x(c: dict[str, Any]) -> vnode_pb2.ForwardRequest:
    request: vnode_pb2.ForwardRequest = forward(
        "fc", POISON, c, sender_vnode="x", sender_replica=0, sender_epoch=3
    )
    return request


def stolen_certificate_signer(name: str) -> signed.Signer:
    """A real certificate for `name` from the cluster's CA, but a key it never certified."""
    real = identities.pnode_signer(name)
    forger = signed.Signer()
    forger.update(identity.generate_key(), identity.certificate_pem(real.certificate))
    return forger


def rogue_ca_signer(name: str) -> signed.Signer:
    """A well-formed identity for `name` from a CA this cluster never trusted."""
    return identities.pnode_signer(name, identity.Authority.create(identities.now()))


async def refused(call: Any) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(aio.AioRpcError) as caught:
        await call
    return caught.value.code(), peers.error_reason(caught.value)


@pytest.fixture
def counted(cluster) -> collections.Counter[tuple[bool, str | None]]:  # noqa: F811
    seen: collections.Counter[tuple[bool, str | None]] = collections.Counter()
    cluster["plane"].on_message = lambda forward, reason: seen.update([(forward, reason)])
    return seen


FORGERIES = [
    pytest.param(None, grpc.StatusCode.UNAUTHENTICATED, "Unsigned", id="unsigned"),
    pytest.param(
        lambda: stolen_certificate_signer("p"),
        grpc.StatusCode.UNAUTHENTICATED,
        "BadSignature",
        id="key-never-certified",
    ),
    pytest.param(
        lambda: rogue_ca_signer("p"),
        grpc.StatusCode.UNAUTHENTICATED,
        "UnknownIssuer",
        id="another-ca",
    ),
    pytest.param(
        lambda: identities.pnode_signer("q"),
        grpc.StatusCode.PERMISSION_DENIED,
        "NotSender",
        id="a-pnode-not-hosting-x",
    ),
]


@pytest.mark.parametrize(("signer", "code", "reason"), FORGERIES)
async def test_a_forged_result_is_refused_unchecked_unreported_and_counted(
    cluster, counted, signer, code, reason  # noqa: F811
) -> None:
    c = cluster
    await restore_all(c)
    reports = Reports()
    c["plane"].reporter = reports
    async with aio.insecure_channel(c["plane_address"]) as channel:
        stub: Any = (
            vnode_pb2_grpc.VNodeServiceStub(channel)
            if signer is None
            else identities.SignedVNodeStub(channel, signer())
        )
        assert await refused(stub.Forward(forged_from_x(c))) == (code, reason)
    assert counted == {(True, reason): 1}
    assert reports.sent == [], "a refused message is never checked or reported"
    assert c["driver"].forwards == [], "nor computed on"
    # The same poison from x's real host is checked, refused and reported: the refusal
    # above was the identity's, not the tensor's.
    assert (await refused(c["as_p"].Forward(forged_from_x(c))))[1] == "CheckFailed"


async def test_only_the_driver_may_send_as_driver_or_restore(cluster, counted) -> None:  # noqa: F811
    c = cluster
    await restore_all(c)
    await run_step(c)  # fc has weights now
    fc = c["plane"].instance(NET, "fc")
    before = {k: v.copy() for k, v in fc.params.items()}
    as_pnode = c["as_p"]  # the host of every VNode here, yet not the job's driver
    restore = vnode_pb2.RestoreRequest(
        job="j", step=0, network=NET, vnode="fc", epoch=3, seed=99, attempt=2,
        optimizer="sgd", learning_rate=1.0,
    )  # fmt: skip
    assert await refused(as_pnode.Restore(restore)) == (
        grpc.StatusCode.PERMISSION_DENIED,
        "NotDriver",
    )
    checkpoint = vnode_pb2.CheckpointRequest(
        job="j", step=0, network=NET, vnode="fc", epoch=3, attempt=1,
        destination=f"file://{c['tmp']}/ckpt/",
    )  # fmt: skip
    assert (await refused(as_pnode.Checkpoint(checkpoint)))[1] == "NotDriver"
    for name, value in before.items():
        np.testing.assert_array_equal(fc.params[name], value)
    batch = tensors.encode(np.array([0, 1], np.int64))
    counted.clear()
    assert await refused(as_pnode.Forward(forward("x", batch, c, step=2))) == (
        grpc.StatusCode.PERMISSION_DENIED,
        "NotDriver",
    )
    assert counted == {(True, "NotDriver"): 1}
    taken = await c["stub"].Forward(forward("x", batch, c, step=2))  # the driver's identity
    assert not taken.duplicate


@pytest.mark.parametrize("forged", [False, True], ids=["signed", "signature-forged"])
def test_over_mutual_tls_a_quorum_finding_is_reported_only_if_its_evidence_verifies(
    forged: bool, tmp_path: Path
) -> None:
    # Over mutual TLS results are taken on the connection's word and their signatures kept
    # unverified; before a quorum finding is reported, every result it carries is verified,
    # and one that fails keeps the finding unreported (the orchestrator would refuse it and
    # strike this PNode for a false accusation).
    keeper = identity_of("r")
    keeper.plaintext = False
    plane = dataplane.DataPlane(
        sender=peers.Peers(
            peers.Orchestrators(["127.0.0.1:1"]),
            signer=keeper.signer,
            client_ca=keeper.client_ca,
            max_message_bytes=4096,
        ),
        keeper=keeper,
        blob_store=blobs.BlobStore(workdir=tmp_path),
        kind_factory=dataplane.runtime_kinds(workdir=tmp_path, cache_dir=None, datasets={}),
    )

    def result(replica: int, signer: signed.Signer) -> common_pb2.SignedMessage:
        body = vnode_pb2.ForwardRequest(
            job="j", step=1, network=NET, sender_vnode="x", sender_replica=replica,
            sender_epoch=3, target_vnode="fc", target_epoch=3, tensor=POISON,
        ).SerializeToString()  # fmt: skip
        method = signed.full_method("Forward")
        metadata = dict(signer.metadata(method, body))
        return common_pb2.SignedMessage(
            method=method,
            body=body,
            certificate=metadata[identity.CERTIFICATE_METADATA],
            signature=metadata[identity.SIGNATURE_METADATA],
        )

    honest = result(0, identities.pnode_signer("p"))
    loser = result(1, stolen_certificate_signer("q") if forged else identities.pnode_signer("q"))
    finding = vnode.Finding(
        job="j", position=("step", 1), forward=True, disputed=False, subject_vnode="x",
        subject_replica=1, subject_epoch=3, message="replica 1 lost", evidence=(honest, loser),
    )  # fmt: skip
    assert plane._provable(finding) is not forged
