"""The data plane over real sockets: an agent's VNodeService hosting a small network
(x, y → fc → loss), a test driver that listens as "__driver__", and a test resolution
service answering where the VNodes are. Peers send with the agent's own `Peers`.

The numbers are checked against the same runtime kinds driven directly (no gRPC), so the
distributed step must do exactly that math, no more and no less.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from grpc import aio

from agent import blobs, dataplane, keys, peers
from agent.runtime import kinds, optim, state
from api import tensors
from api.dcnr.v1 import (
    common_pb2,
    pnode_pb2,
    resolve_pb2,
    resolve_pb2_grpc,
    vnode_pb2,
    vnode_pb2_grpc,
)
from tests.support import identities

NET = "tiny"
SEED = 7
LR = 0.1
BATCH = np.array([0, 2, 3, 5], dtype=np.int64)


class Driver(vnode_pb2_grpc.VNodeServiceServicer, resolve_pb2_grpc.ResolutionServiceServicer):
    """The driver ("__driver__") and the resolution service, as the orchestrator serves them."""

    def __init__(self) -> None:
        self.forwards: list[vnode_pb2.ForwardRequest] = []
        self.backwards: list[vnode_pb2.BackwardRequest] = []
        self.endpoints: dict[str, resolve_pb2.Endpoint] = {}
        self.arrived = asyncio.Condition()

    async def Forward(self, request, context):
        async with self.arrived:
            self.forwards.append(request)
            self.arrived.notify_all()
        return vnode_pb2.ForwardResponse()

    async def Backward(self, request, context):
        async with self.arrived:
            self.backwards.append(request)
            self.arrived.notify_all()
        return vnode_pb2.BackwardResponse()

    async def Resolve(self, request, context):
        found = [self.endpoints[request.vnode]] if request.vnode in self.endpoints else []
        return resolve_pb2.ResolveResponse(
            endpoints=resolve_pb2.VNodeEndpoints(
                network=request.network, vnode=request.vnode, endpoints=found
            )
        )

    async def Checkpoint(self, request, context):
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "the driver holds no state")

    async def Restore(self, request, context):
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "the driver holds no state")

    async def DescribeData(self, request, context):
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "the driver reads no data")

    async def Deliver(self, request_iterator, context):
        """As the orchestrator's inbox serves it: each message taken as its unary call."""
        async for message in request_iterator:
            async with self.arrived:
                if message.WhichOneof("body") == "forward":
                    self.forwards.append(vnode_pb2.ForwardRequest.FromString(message.forward))
                else:
                    self.backwards.append(vnode_pb2.BackwardRequest.FromString(message.backward))
                self.arrived.notify_all()
            yield vnode_pb2.DeliverResponse(sequence=message.sequence)

    async def BatchResolve(self, request, context):
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "agents resolve one VNode at a time")

    async def WatchEndpoints(self, request, context):
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "agents do not watch")
        yield resolve_pb2.WatchEndpointsResponse()

    async def wait(self, forwards: int, backwards: int) -> None:
        async with self.arrived:
            await asyncio.wait_for(
                self.arrived.wait_for(
                    lambda: len(self.forwards) >= forwards and len(self.backwards) >= backwards
                ),
                10,
            )


def assignment(vnode: str, kind: str, inputs: list[str], outputs: list[str], **extra: Any):
    return pnode_pb2.Assignment(
        network=NET, vnode=vnode, replica=0, epoch=3, kind=kind, inputs=inputs,
        outputs=outputs, allocation=f"{NET}.{vnode}.0", **extra,
    )  # fmt: skip


@pytest.fixture
def data_file(tmp_path: Path) -> Path:
    rng = np.random.default_rng(1)
    path = tmp_path / "data.npz"
    np.savez(
        path,
        x_train=rng.normal(size=(8, 4)).astype(np.float32),
        y_train=rng.integers(0, 3, size=8).astype(np.int64),
    )
    return path


@pytest.fixture
async def cluster(tmp_path: Path, data_file: Path):
    driver = Driver()
    driver_server = aio.server()
    vnode_pb2_grpc.add_VNodeServiceServicer_to_server(driver, driver_server)
    resolve_pb2_grpc.add_ResolutionServiceServicer_to_server(driver, driver_server)
    driver_port = driver_server.add_insecure_port("127.0.0.1:0")
    await driver_server.start()
    orchestrators = peers.Orchestrators([f"127.0.0.1:{driver_port}"])
    keeper = identity_of("p")
    sender = peers.Peers(
        orchestrators,
        signer=keeper.signer,
        client_ca=lambda: None,  # in-process plaintext listeners; TLS: test_dataplane_tls
        max_message_bytes=4096,
        retry=peers.Retry(deadline=5),
    )
    plane = dataplane.DataPlane(
        sender=sender,
        keeper=keeper,
        blob_store=blobs.BlobStore(workdir=tmp_path),
        kind_factory=dataplane.runtime_kinds(workdir=tmp_path, cache_dir=None, datasets={}),
        max_message_bytes=4096,
    )
    server = aio.server()
    plane.add_to_server(server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    ref = common_pb2.DataRef(url=f"file://{data_file.name}")
    plane.reconcile([
        assignment("x", "input", [], ["fc"], params_json=b'{"field": "x_train"}', data=ref),
        assignment("y", "input", [], ["loss"], params_json=b'{"field": "y_train"}', data=ref),
        assignment("fc", "dense", ["x"], ["loss"], params_json=b'{"units": 3}'),
        assignment("loss", "softmax_cross_entropy", ["fc", "y"], []),
    ])  # fmt: skip
    for name in ("x", "y", "fc", "loss"):
        driver.endpoints[name] = resolve_pb2.Endpoint(
            pnode_id="p", address=f"127.0.0.1:{port}", replica=0, epoch=3
        )
    channel = aio.insecure_channel(f"127.0.0.1:{port}")
    yield {
        "plane": plane,
        "driver": driver,
        "stub": identities.SignedVNodeStub(channel, identities.orchestrator_signer()),
        #: As the agent on PNode "p" (which hosts every VNode here) would send.
        "as_p": identities.SignedVNodeStub(channel, keeper.signer),
        "plane_address": f"127.0.0.1:{port}",
        "reply_to": f"127.0.0.1:{driver_port}",
        "tmp": tmp_path,
        "data": data_file,
        "sender": sender,
    }
    await channel.close(None)
    await server.stop(None)
    await plane.close()
    await sender.close()
    await orchestrators.close()
    await driver_server.stop(None)


def identity_of(pnode: str) -> keys.Keeper:
    """An agent's identity as Register leaves it: a certificate naming `pnode`, the CA."""
    keeper = keys.Keeper()
    ca = identities.authority()
    keeper.accept(
        ca.issue_pnode(keeper.csr(pnode), pnode, identities.now(), identities.HOUR),
        ca.certificate_pem,
    )
    # In-process plaintext listeners (as `serve --data-plane-insecure`): every request's
    # signature is verified on receipt. Mutual TLS: test_dataplane_tls, test_attacks.
    keeper.plaintext = True
    return keeper


def forward(target: str, tensor: common_pb2.Tensor, c: dict[str, Any], **over: Any):
    fields: dict[str, Any] = {
        "job": "j", "step": 1, "network": NET, "sender_vnode": "__driver__",
        "target_vnode": target, "target_epoch": 3, "tensor": tensor,
        "reply_to": c["reply_to"], "attempt": 1,
    }  # fmt: skip
    fields.update(over)
    return vnode_pb2.ForwardRequest(**fields)


async def restore_all(c: dict[str, Any], **over: Any) -> None:
    for name in ("x", "y", "fc", "loss"):
        fields: dict[str, Any] = {
            "job": "j", "step": 0, "network": NET, "vnode": name, "epoch": 3, "seed": SEED,
            "attempt": 1, "optimizer": "sgd", "learning_rate": LR,
        }  # fmt: skip
        fields.update(over)
        await c["stub"].Restore(vnode_pb2.RestoreRequest(**fields))


async def run_step(c: dict[str, Any], step: int = 1, attempt: int = 1) -> None:
    driver = c["driver"]
    seen = (len(driver.forwards), len(driver.backwards))
    for source in ("x", "y"):
        reply = await c["stub"].Forward(
            forward(source, tensors.encode(BATCH), c, step=step, attempt=attempt)
        )
        assert not reply.duplicate
    await driver.wait(seen[0] + 1, seen[1] + 2)


def expected_after_one_step(data_file: Path) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """(fc params, [loss, accuracy]) of one step computed with the kinds directly."""
    arrays = np.load(data_file)
    x, y = arrays["x_train"][BATCH], arrays["y_train"][BATCH]
    dense = kinds.kind_class("dense")({"units": 3})
    loss = kinds.kind_class("softmax_cross_entropy")({})
    params = dense.init_params(state.initial_rng(NET, "fc", SEED), [x.shape])
    logits, dense_cache = dense.forward([x], params, training=True)
    out, loss_cache = loss.forward([logits, y], {}, training=True)
    (grad_logits, _), _ = loss.backward(None, loss_cache, {})
    _, grads = dense.backward(grad_logits, dense_cache, params)
    optim.make_optimizer("sgd", LR).step(params, grads)
    return params, out


def assert_refused(exc: pytest.ExceptionInfo[aio.AioRpcError], code: grpc.StatusCode, *words):
    assert exc.value.code() == code, exc.value.details()
    for word in words:
        assert word in (exc.value.details() or ""), exc.value.details()


async def test_one_training_step_does_exactly_the_runtime_math(cluster):
    c = cluster
    await restore_all(c)
    await run_step(c)
    params, out = expected_after_one_step(c["data"])
    driver = c["driver"]
    (sink,) = driver.forwards
    assert (sink.sender_vnode, sink.step, sink.attempt) == ("loss", 1, 1)
    np.testing.assert_allclose(tensors.decode(sink.tensor), out, rtol=1e-6)
    assert sorted(b.sender_vnode for b in driver.backwards) == ["x", "y"]
    assert all(tensors.is_empty(b.tensor) and b.step == 1 for b in driver.backwards)
    hosted = c["plane"].instance(NET, "fc")
    assert hosted.step == 1
    for name, value in params.items():
        np.testing.assert_allclose(hosted.params[name], value, rtol=1e-6)


async def test_corrupted_stale_and_duplicate_messages_leave_the_step_unaffected(cluster):
    c = cluster
    await restore_all(c)
    corrupted = tensors.encode(BATCH)
    corrupted.data = bytes([corrupted.data[0] ^ 0xFF]) + corrupted.data[1:]
    with pytest.raises(aio.AioRpcError) as exc:
        await c["stub"].Forward(forward("x", corrupted, c))
    assert_refused(exc, grpc.StatusCode.DATA_LOSS, "checksum")
    with pytest.raises(aio.AioRpcError) as exc:
        await c["stub"].Forward(forward("x", tensors.encode(BATCH), c, target_epoch=2))
    assert_refused(exc, grpc.StatusCode.FAILED_PRECONDITION, "2", "3")
    # The step, with every message of the driver delivered twice.
    await c["stub"].Forward(forward("x", tensors.encode(BATCH), c))
    again = await c["stub"].Forward(forward("x", tensors.encode(BATCH), c))
    assert again.duplicate
    await c["stub"].Forward(forward("y", tensors.encode(BATCH), c))
    await c["driver"].wait(1, 2)
    late = await c["stub"].Forward(forward("y", tensors.encode(BATCH), c))
    assert late.duplicate
    params, out = expected_after_one_step(c["data"])
    np.testing.assert_allclose(tensors.decode(c["driver"].forwards[0].tensor), out, rtol=1e-6)
    for name, value in params.items():
        np.testing.assert_allclose(c["plane"].instance(NET, "fc").params[name], value, rtol=1e-6)
    assert len(c["driver"].forwards) == 1
    assert len(c["driver"].backwards) == 2


async def test_older_attempts_are_refused_and_newer_ones_adopted(cluster):
    c = cluster
    await restore_all(c, attempt=4)
    with pytest.raises(aio.AioRpcError) as exc:
        await c["stub"].Forward(forward("x", tensors.encode(BATCH), c, attempt=3))
    assert_refused(exc, grpc.StatusCode.FAILED_PRECONDITION, "attempt", "3", "4")
    await run_step(c, attempt=5)  # adopted: attempt 5 supersedes 4 on every VNode
    assert {f.attempt for f in c["driver"].forwards} == {5}
    with pytest.raises(aio.AioRpcError) as exc:
        await c["stub"].Forward(forward("x", tensors.encode(BATCH), c, step=2, attempt=4))
    assert exc.value.code() == grpc.StatusCode.FAILED_PRECONDITION


@pytest.mark.parametrize(
    ("change", "code", "word"),
    [
        ({"tensor": tensors.encode(np.zeros(1024, np.float64))}, "RESOURCE_EXHAUSTED", "limit"),
        ({"target_vnode": "nope"}, "NOT_FOUND", "nope"),
        ({"sender_vnode": "fc"}, "INVALID_ARGUMENT", "sender_vnode"),
        ({"tensor": common_pb2.Tensor(dtype="int64", shape=[3], data=b"1234")}, "INVALID_ARGUMENT",
         "shape"),
        ({"tensor": common_pb2.Tensor(dtype="complex", shape=[0])}, "INVALID_ARGUMENT", "dtype"),
        ({"step": None, "request_id": ""}, "INVALID_ARGUMENT", "position"),
    ],
)  # fmt: skip
async def test_malformed_messages_are_refused_with_the_field_named(cluster, change, code, word):
    c = cluster
    request = forward("x", tensors.encode(BATCH), c)
    for name, value in change.items():
        if value is None:
            request.ClearField(name)
        else:
            getattr(request, name).CopyFrom(value) if name == "tensor" else setattr(
                request, name, value
            )
    with pytest.raises(aio.AioRpcError) as exc:
        await c["stub"].Forward(request)
    assert_refused(exc, getattr(grpc.StatusCode, code), word)


async def test_checkpoint_then_restore_returns_to_that_state(cluster):
    c = cluster
    await restore_all(c)
    await run_step(c)
    destination = f"file://{c['tmp']}/ckpt/"
    request = vnode_pb2.CheckpointRequest(
        job="j", step=1, network=NET, vnode="fc", epoch=3, destination=destination, attempt=1
    )
    blob = (await c["stub"].Checkpoint(request)).blob
    assert blob.url == f"{destination}j/fc-0/step-1.npz"
    content = (c["tmp"] / "ckpt" / "j" / "fc-0" / "step-1.npz").read_bytes()
    assert hashlib.sha256(content).digest() == blob.sha256
    after_one = {k: v.copy() for k, v in c["plane"].instance(NET, "fc").params.items()}
    stateless = await c["stub"].Checkpoint(
        vnode_pb2.CheckpointRequest(
            job="j", step=1, network=NET, vnode="loss", epoch=3, destination=destination,
            attempt=1,
        )
    )  # fmt: skip
    assert not stateless.blob.url
    await run_step(c, step=2)
    moved = c["plane"].instance(NET, "fc").params
    assert any(not np.allclose(moved[k], v) for k, v in after_one.items())
    await restore_all(c, step=1, attempt=2)
    restored = await c["stub"].Restore(
        vnode_pb2.RestoreRequest(
            job="j", step=1, network=NET, vnode="fc", epoch=3, blob=blob, attempt=2,
            optimizer="sgd", learning_rate=LR,
        )
    )  # fmt: skip
    assert restored.step == 1
    for name, value in after_one.items():
        np.testing.assert_array_equal(c["plane"].instance(NET, "fc").params[name], value)
    tampered = common_pb2.BlobRef(url=blob.url, sha256=bytes(32), size_bytes=blob.size_bytes)
    with pytest.raises(aio.AioRpcError) as exc:
        await c["stub"].Restore(
            vnode_pb2.RestoreRequest(
                job="j", step=1, network=NET, vnode="fc", epoch=3, blob=tampered, attempt=2,
                optimizer="sgd", learning_rate=LR,
            )
        )  # fmt: skip
    assert_refused(exc, grpc.StatusCode.DATA_LOSS, "sha256")


async def test_inference_passes_tensors_through_to_the_sinks(cluster):
    c = cluster
    await restore_all(c)
    x = np.random.default_rng(2).normal(size=(2, 4)).astype(np.float32)
    await c["stub"].Forward(forward("x", tensors.encode(x), c, request_id="r1"))
    await c["stub"].Forward(forward("y", tensors.empty(), c, request_id="r1"))
    await c["driver"].wait(1, 0)
    (out,) = c["driver"].forwards
    assert out.request_id == "r1"
    assert out.sender_vnode == "loss"
    probabilities = tensors.decode(out.tensor)
    assert probabilities.shape == (2, 3)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-6)
    assert c["driver"].backwards == []


async def test_a_compute_failure_is_refused_to_the_sender_and_told_to_the_driver_once(
    cluster, monkeypatch
):
    """fc's weights are 4 wide; a 5-wide input passes every declared shape but fails fc's
    compute. x (the sender) is refused, as before; the driver at reply_to, whom the refusal
    never reaches, gets a Forward from fc with the kind's error, once however often fc is
    fed that position (every replica of a parent, a sender's retry)."""
    c = cluster
    told: list[vnode_pb2.ForwardRequest] = []
    send_forward = c["sender"].send_forward

    def spying(request: vnode_pb2.ForwardRequest, array: np.ndarray | None = None):
        if request.target_vnode == "__driver__" and request.compute_failure:
            told.append(request)
        return send_forward(request, array)

    monkeypatch.setattr(c["sender"], "send_forward", spying)
    x = np.ones((2, 4), np.float32)
    await c["stub"].Forward(forward("x", tensors.encode(x), c, request_id="r1"))
    await c["stub"].Forward(forward("y", tensors.empty(), c, request_id="r1"))
    await c["driver"].wait(1, 0)  # fc has its 4-wide weights now
    wide = tensors.encode(np.ones((2, 5), np.float32))
    for _ in range(2):  # as x would send it to fc
        with pytest.raises(aio.AioRpcError) as exc:
            await c["as_p"].Forward(
                forward("fc", wide, c, request_id="r2", sender_vnode="x", sender_epoch=3)
            )
        assert_refused(exc, grpc.StatusCode.INVALID_ARGUMENT, "kind 'dense' of 'fc'", "[2, 5]")
        assert reason(exc) == "Invalid"
    await c["driver"].wait(2, 0)
    report = c["driver"].forwards[1]
    assert (report.job, report.request_id, report.attempt) == ("j", "r2", 1)
    assert (report.sender_vnode, report.sender_replica, report.sender_epoch) == ("fc", 0, 3)
    assert report.target_vnode == "__driver__"
    assert tensors.is_empty(report.tensor)
    assert report.compute_failure.startswith("kind 'dense' of 'fc': inputs[0]: shape [2, 5]")
    assert told == [report]


async def test_a_failed_backward_pass_is_told_to_the_driver_as_a_backward(cluster, monkeypatch):
    c = cluster
    await restore_all(c)
    fc = c["plane"].instance(NET, "fc")
    before = None

    def failing(grad, cache, params):
        nonlocal before
        before = {k: v.copy() for k, v in params.items()}
        raise FloatingPointError("overflow in matmul")

    monkeypatch.setattr(fc.kind, "backward", failing)
    for source in ("x", "y"):
        await c["stub"].Forward(forward(source, tensors.encode(BATCH), c))
    await c["driver"].wait(1, 2)  # loss's output, y's Backward, and fc's failure (no x's)
    (told,) = [b for b in c["driver"].backwards if b.compute_failure]
    assert (told.sender_vnode, told.step, told.attempt) == ("fc", 1, 1)
    assert told.compute_failure == "kind 'dense' of 'fc', backward: overflow in matmul"
    assert fc.step == 0, "no update from a failed backward pass"
    for name, value in (before or {}).items():
        np.testing.assert_array_equal(fc.params[name], value)


async def test_hop_cost_is_reported(cluster, capsys):
    """Not a timing assertion: measures one forward+backward round for the report."""
    c = cluster
    await restore_all(c)
    started = time.perf_counter()
    for step in range(1, 21):
        await run_step(c, step=step)
    per_step = (time.perf_counter() - started) / 20
    # x,y → fc → loss and back: 6 VNode-to-VNode hops plus 3 to the driver per step.
    with capsys.disabled():
        print(f"\n[hop cost] {per_step * 1e3:.2f} ms per training step of 9 messages")
    assert c["plane"].instance(NET, "fc").step == 20


# -- data: described here, a job's data read here ------------------------------------------


def describe(c: dict[str, Any], vnode: str = "x", **over: Any) -> vnode_pb2.DescribeDataRequest:
    fields: dict[str, Any] = {"network": NET, "vnode": vnode, "epoch": 3, **over}
    return vnode_pb2.DescribeDataRequest(**fields)


def reason(exc: pytest.ExceptionInfo[aio.AioRpcError]) -> str:
    trailing: Any = exc.value.trailing_metadata() or ()
    for key, value in trailing:
        if key == dataplane.DETAILS_KEY:
            return common_pb2.ErrorDetails.FromString(value).reason
    return ""


async def test_describe_data_answers_what_the_source_reads_as_this_agent_resolves_it(cluster):
    c = cluster
    own = await c["stub"].DescribeData(describe(c))
    assert (own.has_field, list(own.shape), own.dtype) == (True, [8, 4], "float32")
    assert list(own.fields) == ["x_train", "y_train"]
    assert own.resolved_url == str(c["data"]), "relative to the agent's workdir"
    np.savez(c["tmp"] / "other.npz", x_train=np.zeros((5, 4), np.float32))
    other = await c["stub"].DescribeData(
        describe(c, data=common_pb2.DataRef(url="file://other.npz"))
    )
    assert (other.has_field, list(other.shape)) == (True, [5, 4])
    labels = await c["stub"].DescribeData(
        describe(c, "y", data=common_pb2.DataRef(url="file://other.npz"))
    )
    assert (labels.has_field, list(labels.shape), list(labels.fields)) == (False, [], ["x_train"])


@pytest.mark.parametrize(
    ("request_fields", "code", "words", "why"),
    [
        ({"data": common_pb2.DataRef(url="file://gone.npz")}, "INVALID_ARGUMENT",
         ["no such file", "gone.npz", "resolve against"], "DataError"),
        ({"data": common_pb2.DataRef(url="http://x/d.npz")}, "INVALID_ARGUMENT",
         ["data.url", "http://x/d.npz"], "DataError"),
        ({"vnode": "fc"}, "INVALID_ARGUMENT", ["no data ref"], "DataError"),
        ({"epoch": 2}, "FAILED_PRECONDITION", ["epoch", "2", "3"], "StaleEpoch"),
        ({"vnode": "nope"}, "NOT_FOUND", ["nope"], "NotHosted"),
    ],
)  # fmt: skip
async def test_describe_data_refusals_say_whether_the_data_is_at_fault(
    cluster, request_fields, code, words, why
):
    c = cluster
    with pytest.raises(aio.AioRpcError) as exc:
        await c["stub"].DescribeData(describe(c, **request_fields))
    assert_refused(exc, getattr(grpc.StatusCode, code), *words)
    assert reason(exc) == why


async def test_a_job_s_data_named_in_restore_feeds_its_batches(cluster):
    c = cluster
    rng = np.random.default_rng(9)
    np.savez(
        c["tmp"] / "job.npz",
        x_train=rng.normal(size=(12, 4)).astype(np.float32),
        y_train=rng.integers(0, 3, size=12).astype(np.int64),
    )
    await restore_all(c, data=common_pb2.DataRef(url="file://job.npz"))
    await run_step(c)
    _, out = expected_after_one_step(c["tmp"] / "job.npz")
    np.testing.assert_allclose(tensors.decode(c["driver"].forwards[0].tensor), out, rtol=1e-6)
    # A later Restore without data returns the job to the VNode's own data ref.
    await restore_all(c, attempt=2)
    await run_step(c, attempt=2)
    _, own = expected_after_one_step(c["data"])
    np.testing.assert_allclose(tensors.decode(c["driver"].forwards[1].tensor), own, rtol=1e-6)


async def test_an_inference_input_named_by_data_is_read_by_the_source(cluster):
    c = cluster
    await restore_all(c)
    x = np.random.default_rng(3).normal(size=(3, 4)).astype(np.float32)
    np.savez(c["tmp"] / "infer.npz", x_train=x)
    ref = common_pb2.DataRef(url="file://infer.npz")
    await c["stub"].Forward(forward("x", tensors.empty(), c, request_id="r1", data=ref))
    await c["stub"].Forward(forward("y", tensors.empty(), c, request_id="r1"))
    await c["driver"].wait(1, 0)
    assert tensors.decode(c["driver"].forwards[0].tensor).shape == (3, 3)
    with pytest.raises(aio.AioRpcError) as exc:
        await c["stub"].Forward(forward("x", tensors.encode(BATCH), c, step=2, data=ref))
    assert_refused(exc, grpc.StatusCode.INVALID_ARGUMENT, "data", "inference")


# -- where compute runs ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pinned", "in_thread", "cpu", "expected"),
    [
        (False, False, 0.00003, False),  # a small layer stays on the loop
        (False, False, dataplane.SLOW_CALL * 1.5, True),  # a slow one goes to a thread
        (False, True, dataplane.SLOW_CALL * 0.75, True),  # and stays while borderline
        (False, True, dataplane.SLOW_CALL * 0.25, False),  # back once clearly fast
        (True, True, 0.00003, True),  # pinned (a data source not read yet) stays
        (True, False, 0.00003, True),
    ],
)
def test_compute_moves_to_a_thread_by_cpu_time_with_hysteresis(
    pinned: bool, in_thread: bool, cpu: float, expected: bool
) -> None:
    assert dataplane.in_thread_next(pinned=pinned, in_thread=in_thread, cpu=cpu) is expected


async def test_a_source_reads_its_data_in_a_thread_then_computes_on_the_loop(cluster) -> None:
    """Its first batch may read (or download) the data: a worker thread. Once the data is
    in memory, picking a batch's rows is a small call, and it comes back to the loop."""
    c = cluster
    await restore_all(c)
    source = c["plane"]._hosted[(NET, "x", 0)]
    assert (source.pinned_thread, source.in_thread) == (True, True)
    await run_step(c)
    assert not source.pinned_thread, "its data is read"
    await run_step(c, step=2)
    assert not source.in_thread, "rows of an array in memory: well under SLOW_CALL of CPU"
