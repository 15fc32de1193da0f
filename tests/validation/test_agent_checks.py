"""The receiving agent checks every result before using it, refuses a bad one naming the
check, and reports the producer (a real DataPlane behind a real gRPC server). Results are
sent as PNode "p", which hosts every VNode here (`as_p`): only its signature speaks for
them (docs/security.md)."""

from __future__ import annotations

from typing import Any

import grpc
import numpy as np
import pytest

from agent import dataplane, peers
from api import tensors
from api.dcnr.v1 import validation_pb2, vnode_pb2
from tests.agent.test_dataplane import assignment, cluster, data_file, forward  # noqa: F401
from tests.support import wait

#: The epoch the test cluster's resolver gives every VNode: a sender must claim it.
EPOCH = 3


class Reports:
    """A Reporter that keeps what it was asked to send."""

    def __init__(self) -> None:
        self.sent: list[validation_pb2.ReportResultRequest] = []

    async def report(self, request: validation_pb2.ReportResultRequest) -> None:
        self.sent.append(request)


async def _refused(c: dict[str, Any], **over: Any) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await c["as_p"].Forward(forward("loss", **over, c=c))
    return raised.value


async def test_nan_activation_is_refused_and_reported(cluster: dict[str, Any]) -> None:  # noqa: F811
    c = cluster
    reports = Reports()
    plane: dataplane.DataPlane = c["plane"]
    plane.reporter = reports
    bad = np.array([[1.0, np.nan, 0.0]], dtype=np.float32)
    error = await _refused(
        c, tensor=tensors.encode(bad), sender_vnode="fc", sender_replica=0, sender_epoch=EPOCH
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "check finite failed" in (error.details() or "")
    # The report is sent on a task of its own.
    await wait.until(lambda: reports.sent, within=5, what="a report of the NaN")
    (report,) = reports.sent
    assert (report.subject_vnode, report.subject_replica, report.subject_epoch) == ("fc", 0, EPOCH)
    assert (report.vnode, report.step, report.job) == ("loss", 1, "j")
    assert [(x.check, x.result) for x in report.checks] == [
        ("finite", validation_pb2.CHECK_RESULT_FAILED)
    ]


async def test_kind_checks_use_the_neighbour_kinds(cluster: dict[str, Any]) -> None:  # noqa: F811
    c = cluster
    plane: dataplane.DataPlane = c["plane"]
    plane.reconcile(
        [
            assignment(
                "loss",
                "softmax_cross_entropy",
                ["fc", "y"],
                [],
                neighbour_kinds={"fc": "dense", "y": "input"},
                neighbour_params_json={"fc": b'{"units": 3}'},
            )
        ]
    )
    wrong_width = np.zeros((2, 4), dtype=np.float32)
    error = await _refused(
        c, tensor=tensors.encode(wrong_width), sender_vnode="fc", sender_epoch=EPOCH
    )
    assert "check shape failed" in (error.details() or "")
    labels = np.array([0, 1], dtype=np.int64)  # integers are fine from an input
    reply = await c["as_p"].Forward(
        forward("loss", tensors.encode(labels), c, sender_vnode="y", sender_epoch=EPOCH)
    )
    assert not reply.duplicate


async def test_non_finite_gradient_is_refused(cluster: dict[str, Any]) -> None:  # noqa: F811
    c = cluster
    grad = np.array([[np.inf, 0, 0]], dtype=np.float32)
    request = forward("fc", tensors.encode(grad), c, sender_vnode="loss", sender_epoch=EPOCH)
    backward = vnode_pb2.BackwardRequest()
    backward.ParseFromString(request.SerializeToString())
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await c["as_p"].Backward(backward)
    assert "check finite failed" in (raised.value.details() or "")


async def test_a_superseded_sender_replica_gets_no_vote(cluster: dict[str, Any]) -> None:  # noqa: F811
    """A PNode still hosting a slot that has moved (its assignment set not yet arrived) may
    be fed by a stale sender and send on: its result is refused as superseded, and does
    not take the place of the current replica's, which arrives next."""
    c = cluster
    fine = np.zeros((2, 3), dtype=np.float32)
    stale = await _refused(c, tensor=tensors.encode(fine), sender_vnode="fc", sender_epoch=2)
    assert stale.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert peers.error_reason(stale) == "SenderSuperseded"
    assert "superseded by epoch 3" in (stale.details() or "")
    current = await c["as_p"].Forward(
        forward("loss", tensors.encode(fine), c, sender_vnode="fc", sender_epoch=EPOCH)
    )
    assert not current.duplicate
    # A sender newer than resolution knows cannot be attributed to its PNode yet: refused
    # UNAVAILABLE (its sender retries), and taken once resolution knows the new epoch.
    newer = forward("loss", tensors.encode(fine), c, sender_vnode="fc", sender_epoch=9, step=2)
    with pytest.raises(grpc.aio.AioRpcError) as early:
        await c["as_p"].Forward(newer)
    assert early.value.code() == grpc.StatusCode.UNAVAILABLE
    assert peers.error_reason(early.value) == "SenderUnresolved"
    c["driver"].endpoints["fc"].epoch = 9
    assert not (await c["as_p"].Forward(newer)).duplicate
