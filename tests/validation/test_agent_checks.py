"""The receiving agent checks every result before using it, refuses a bad one naming the
check, and reports the producer (a real DataPlane behind a real gRPC server)."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import numpy as np
import pytest

from agent import dataplane
from api import tensors
from api.dcnr.v1 import validation_pb2, vnode_pb2
from tests.agent.test_dataplane import assignment, cluster, data_file, forward  # noqa: F401


class Reports:
    """A Reporter that keeps what it was asked to send."""

    def __init__(self) -> None:
        self.sent: list[validation_pb2.ReportResultRequest] = []

    async def report(self, request: validation_pb2.ReportResultRequest) -> None:
        self.sent.append(request)


async def _refused(c: dict[str, Any], **over: Any) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await c["stub"].Forward(forward("loss", **over, c=c))
    return raised.value


async def test_nan_activation_is_refused_and_reported(cluster: dict[str, Any]) -> None:  # noqa: F811
    c = cluster
    reports = Reports()
    plane: dataplane.DataPlane = c["plane"]
    plane.reporter = reports
    bad = np.array([[1.0, np.nan, 0.0]], dtype=np.float32)
    error = await _refused(
        c, tensor=tensors.encode(bad), sender_vnode="fc", sender_replica=0, sender_epoch=7
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "check finite failed" in (error.details() or "")
    for _ in range(100):  # the report is sent on a task of its own
        if reports.sent:
            break
        await asyncio.sleep(0.01)  # polling a condition with a deadline
    (report,) = reports.sent
    assert (report.subject_vnode, report.subject_replica, report.subject_epoch) == ("fc", 0, 7)
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
    error = await _refused(c, tensor=tensors.encode(wrong_width), sender_vnode="fc")
    assert "check shape failed" in (error.details() or "")
    labels = np.array([0, 1], dtype=np.int64)  # integers are fine from an input
    reply = await c["stub"].Forward(forward("loss", tensors.encode(labels), c, sender_vnode="y"))
    assert not reply.duplicate


async def test_non_finite_gradient_is_refused(cluster: dict[str, Any]) -> None:  # noqa: F811
    c = cluster
    grad = np.array([[np.inf, 0, 0]], dtype=np.float32)
    request = forward("fc", tensors.encode(grad), c, sender_vnode="loss")
    backward = vnode_pb2.BackwardRequest()
    backward.ParseFromString(request.SerializeToString())
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await c["stub"].Backward(backward)
    assert "check finite failed" in (raised.value.details() or "")
