"""In-process delivery between VNodes hosted on the same agent (`DataPlane.deliver_local`,
`Peers.local`): no gRPC, no encoding, no copy, and nothing weaker. Every message here is
offered both ways to the same agent (test_dataplane's: x, y -> fc -> loss, all on PNode
"p", epoch 3) — in process, and over a real loopback socket signed by "p" — and must be
refused or accepted alike, with the same status code and reason, the same report, and the
same bookkeeping (one path's delivery is the other's duplicate)."""

from __future__ import annotations

import datetime as dt
from typing import Any

import grpc
import numpy as np
import pytest
from grpc import aio

from agent import peers
from api import identity, tensors
from api.dcnr.v1 import validation_pb2, vnode_pb2
from tests.agent import test_dataplane as dp
from tests.support import identities, wait

# test_dataplane's agent, its data and its helpers.
cluster, data_file = dp.cluster, dp.data_file
NET, BATCH, forward = dp.NET, dp.BATCH, dp.forward
restore_all, run_step = dp.restore_all, dp.run_step

ROWS = np.ones((4, 4), np.float32)


class Reports:
    def __init__(self) -> None:
        self.sent: list[validation_pb2.ReportResultRequest] = []

    async def report(self, request: validation_pb2.ReportResultRequest) -> None:
        self.sent.append(request)


def from_x(c: dict[str, Any], **over: Any) -> vnode_pb2.ForwardRequest:
    """x's output for fc, as x's data plane builds it (no tensor: `Peers` adds it)."""
    fields: dict[str, Any] = {"sender_vnode": "x", "target_vnode": "fc", "sender_epoch": 3}
    fields.update(over)
    request: vnode_pb2.ForwardRequest = forward(
        fields.pop("target_vnode"), tensors.empty(), c, **fields
    )
    request.ClearField("tensor")
    return request


async def remote(c: dict[str, Any], request: vnode_pb2.ForwardRequest, array: Any) -> Any:
    sent = vnode_pb2.ForwardRequest()
    sent.CopyFrom(request)
    sent.tensor.CopyFrom(tensors.encode(array))
    try:
        reply = await c["as_p"].Forward(sent)
    except aio.AioRpcError as exc:
        return exc.code(), peers.error_reason(exc)
    return "duplicate" if reply.duplicate else "accepted"


async def local(c: dict[str, Any], request: vnode_pb2.ForwardRequest, array: Any) -> Any:
    try:
        duplicate = await c["plane"].deliver_local(request, array, forward=True)
    except peers.LocalRefused as exc:
        return exc.code, exc.reason
    return "duplicate" if duplicate else "accepted"


BAD = np.full((4, 4), np.nan, np.float32)
CASES: dict[str, tuple[dict[str, Any], np.ndarray, Any]] = {
    "accepted": ({}, ROWS, "accepted"),
    "stale target epoch": (
        {"target_epoch": 2}, ROWS, (grpc.StatusCode.FAILED_PRECONDITION, "StaleEpoch")
    ),
    "older attempt": ({"attempt": 0}, ROWS, (grpc.StatusCode.FAILED_PRECONDITION, "StaleAttempt")),
    "failed invariant (not finite)": (
        {}, BAD, (grpc.StatusCode.INVALID_ARGUMENT, "CheckFailed")
    ),
    "superseded sender": (
        {"sender_epoch": 2}, ROWS, (grpc.StatusCode.FAILED_PRECONDITION, "SenderSuperseded")
    ),
    "not a parent": ({"sender_vnode": "y"}, ROWS, (grpc.StatusCode.INVALID_ARGUMENT, "Invalid")),
    "not hosted": ({"target_vnode": "nobody"}, ROWS, (grpc.StatusCode.NOT_FOUND, "NotHosted")),
    "too large": (
        {}, np.ones((32, 40), np.float32), (grpc.StatusCode.RESOURCE_EXHAUSTED, "TooLarge")
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(CASES))
async def test_a_co_located_delivery_is_refused_or_accepted_exactly_as_a_remote_one(
    cluster: dict[str, Any], case: str
) -> None:
    c = cluster
    over, array, expected = CASES[case]
    c["plane"].reporter = reports = Reports()
    await restore_all(c)
    # Different steps, so that neither path's delivery is the other's duplicate.
    by_socket = await remote(c, from_x(c, step=1, **over), array)
    in_process = await local(c, from_x(c, step=2, **over), array)
    assert by_socket == in_process == expected
    if expected == "accepted":  # each path's message is a duplicate to the other
        assert await remote(c, from_x(c, step=2), ROWS) == "duplicate"
        assert await local(c, from_x(c, step=1), ROWS) == "duplicate"
    if case != "failed invariant (not finite)":
        assert reports.sent == []
        return
    # Both reported, alike, each with evidence signed by "p" that verifies.
    await wait.until(lambda: len(reports.sent) == 2, within=10, what="both reports sent")
    first, second = reports.sent
    for report, step in ((first, 1), (second, 2)):
        assert [check.check for check in report.checks] == ["finite"]
        assert (report.subject_vnode, report.subject_epoch, report.step) == ("x", 3, step)
        (evidence,) = report.evidence
        who = identity.Verifier(identities.authority().certificate_pem).verify(
            evidence.method, evidence.body, evidence.certificate, evidence.signature,
            dt.datetime.now(dt.UTC),
        )  # fmt: skip
        assert who.name == "p"
        signed = vnode_pb2.ForwardRequest.FromString(evidence.body)
        assert signed.step == step
        assert np.isnan(tensors.decode(signed.tensor)).all()


async def test_a_training_step_between_co_located_vnodes_does_exactly_the_runtime_math(
    cluster: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    c = cluster
    plane = c["plane"]
    c["sender"].local = plane
    handed: list[tuple[str, str]] = []
    deliver = plane.deliver_local

    async def counting(request: Any, array: Any, *, forward: bool) -> None:
        handed.append((request.sender_vnode, request.target_vnode))
        assert not request.HasField("tensor"), "encoded although it never left the process"
        await deliver(request, array, forward=forward)

    monkeypatch.setattr(plane, "deliver_local", counting)
    received: list[np.ndarray] = []
    fc_receive = plane.instance(NET, "fc").receive

    def recording(message: Any) -> Any:
        received.append(message.array)
        return fc_receive(message)

    monkeypatch.setattr(plane.instance(NET, "fc"), "receive", recording)
    await restore_all(c)
    await run_step(c)
    expected_params, expected_out = dp.expected_after_one_step(c["data"])
    fc = plane.instance(NET, "fc")
    for name, value in expected_params.items():
        np.testing.assert_allclose(fc.params[name], value, rtol=1e-6)
    loss = c["driver"].forwards[-1]
    np.testing.assert_allclose(tensors.decode(loss.tensor), expected_out, rtol=1e-6)
    # x->fc, y->loss, fc->loss forward; loss->fc, loss->y, fc->x backward: all in process.
    assert sorted(handed) == sorted(
        [("x", "fc"), ("y", "loss"), ("fc", "loss"), ("loss", "fc"), ("loss", "y"), ("fc", "x")]
    )
    # fc got x's activation and loss's gradient as shared, read-only views: no copy, and
    # neither side can change what the other holds.
    assert len(received) == 2
    for array in received:
        assert array.base is not None
        assert not array.flags.writeable
    assert len(BATCH) == 4


async def test_a_receiver_s_bug_is_unknown_to_a_co_located_sender_as_to_a_remote_one(
    cluster: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Not a refusal with a reason: what gRPC answers a handler that raised, and the
    sender gives up on it either way (UNKNOWN is not retried)."""
    c = cluster
    await restore_all(c)
    fc = c["plane"].instance(NET, "fc")

    def broken(message: Any) -> Any:
        raise TypeError("a plugin kind's bug")

    monkeypatch.setattr(fc, "receive", broken)
    assert await remote(c, from_x(c, step=1), ROWS) == (grpc.StatusCode.UNKNOWN, "")
    assert await local(c, from_x(c, step=2), ROWS) == (grpc.StatusCode.UNKNOWN, "")
    c["sender"].local = c["plane"]
    request = from_x(c, step=3)
    assert await c["sender"].send_forward(request, ROWS) is False


@pytest.mark.parametrize("replicas", [1, 2])
async def test_a_co_located_result_of_a_replicated_vnode_carries_its_evidence_at_once(
    cluster: dict[str, Any], replicas: int
) -> None:
    """With several replicas of the sender, results are compared, and a quorum finding
    carries every replica's signed result: a co-located one is signed on arrival, exactly as
    it would have been sent. With one, nothing is signed until a check fails."""
    c = cluster
    plane = c["plane"]
    hosted = plane._hosted[(NET, "fc", 0)]
    hosted.instance.neighbour_replicas = {"x": replicas}
    request = from_x(c, step=1)
    message = plane._local_message(hosted, request, ROWS, forward=True)
    if replicas == 1:
        assert message.evidence is None
        assert not request.HasField("tensor")
        return
    evidence = message.evidence
    assert evidence is not None
    who = identity.Verifier(identities.authority().certificate_pem).verify(
        evidence.method, evidence.body, evidence.certificate, evidence.signature,
        dt.datetime.now(dt.UTC),
    )  # fmt: skip
    assert (who.name, evidence.method) == ("p", "/dcnr.v1.VNodeService/Forward")
    sent = vnode_pb2.ForwardRequest.FromString(evidence.body)
    assert (sent.sender_vnode, sent.target_vnode, sent.step) == ("x", "fc", 1)
    np.testing.assert_array_equal(tensors.decode(sent.tensor), ROWS)
