"""A VNode that could not compute reaches the driver (vnode.proto `compute_failure`): the
inbox takes the report from any VNode currently holding its slot, for a position a run
waits for, and fails that position with the agent's words; a training step rolls back with
them and an inference ends with INVALID_ARGUMENT, instead of either waiting out its
deadline. Against the fake agent over real gRPC, as tests/controller/jobs/test_driver.py."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from grpc import aio

from api import tensors
from api.dcnr.v1 import vnode_pb2
from api.resources import event, job, meta
from controller import errors as faults
from controller.jobs import inference
from store import base, sqlite
from tests.controller.jobs import driver_harness as harness

XS = np.arange(1, 11, dtype=np.float64) / 10
SPEC = {"epochs": 1, "batch_size": 4, "learning_rate": 0.5, "checkpoint_interval": 1, "seed": 7}
BOOM = "kind 'fake_loss' of 'loss': inputs[0]: shape [4, 5] must end in 4"


@pytest.fixture
async def world(
    tmp_path: Path,
) -> AsyncIterator[tuple[sqlite.SqliteStore, harness.FakeAgent, harness.Orchestrator]]:
    store, view, agent = await harness.cluster(tmp_path, XS)
    orch = harness.Orchestrator(store, view, tmp_path, "r1")
    await orch.start()
    try:
        yield store, agent, orch
    finally:
        await orch.close()
        await agent.close()
        await store.close()


def report(forward: bool = True, **over: Any) -> Any:
    fields: dict[str, Any] = {
        "job": "fit", "step": 1, "network": harness.NET, "sender_vnode": "x",
        "sender_replica": 0, "sender_epoch": 1, "target_vnode": "__driver__",
        "tensor": tensors.empty(), "attempt": 1, "compute_failure": BOOM,
    }  # fmt: skip
    fields.update(over)
    return (vnode_pb2.ForwardRequest if forward else vnode_pb2.BackwardRequest)(**fields)


async def refused(call: Any) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(aio.AioRpcError) as caught:
        await call
    return caught.value.code(), caught.value.details() or ""


async def test_the_inbox_fails_the_position_on_a_report_from_any_current_vnode(world) -> None:
    _, _, orch = world
    inbox, stub = orch.ctx.results.inbox, orch.vnodes
    box = inbox.open(
        job="fit", network=harness.NET, attempt=1, position=1, sinks=["loss"], sources=["x"]
    )
    code, why = await refused(stub.Forward(report(sender_epoch=7)))
    assert code == grpc.StatusCode.FAILED_PRECONDITION
    assert "sender_epoch: 7" in why, "only the VNode holding the slot now may report"
    code, why = await refused(stub.Forward(report(sender_vnode="nope")))
    assert code == grpc.StatusCode.FAILED_PRECONDITION, "no such slot"
    code, why = await refused(stub.Forward(report(step=2)))
    assert code == grpc.StatusCode.FAILED_PRECONDITION
    assert "no run on this orchestrator waits for job 'fit' position 2" in why
    assert (box.failed, box.compute_failed) == (None, None), "nothing refused was filed"

    # x is a source, not a sink: any VNode of the network may fail to compute.
    first = await stub.Forward(report())
    assert not first.duplicate
    told = f"vnode 'x' replica 0 on pnode 'p1': {BOOM}"
    assert (box.compute_failed, box.failed) == (told, told)
    again = await stub.Forward(report(compute_failure="something else"))
    assert again.duplicate
    assert box.compute_failed == told, "the first report is the one the caller reads"

    later = inbox.open(job="fit", network=harness.NET, attempt=1, position=2, sinks=["loss"],
                       sources=["x"])  # fmt: skip
    assert not (await stub.Backward(report(forward=False, step=2, sender_vnode="loss"))).duplicate
    assert later.compute_failed == f"vnode 'loss' replica 0 on pnode 'p1': {BOOM}"


async def test_a_step_that_could_not_be_computed_rolls_back_with_the_agents_words(world) -> None:
    store, agent, orch = world
    agent.cannot_compute = lambda position, attempt: BOOM if (position, attempt) == (2, 1) else None
    spec = job.JobSpec(network=harness.NET, **SPEC)
    await store.create(job.Job(metadata=meta.ObjectMeta(name="fit"), spec=spec))
    await orch.loop.reconcile("fit")
    done = await orch.until("fit", lambda j: j.status.phase == "Succeeded")
    assert done.status.attempt == 2
    await orch.events.flush()
    told = await base.list_all(store, event.Event, index=("object", "Job/fit"))
    rolled = next(e for e in told if e.reason == "RolledBack")
    assert rolled.message == (
        f"rolled back to step 1: step 2: vnode 'loss' replica 0 on pnode 'p1': {BOOM}"
        " (1 attempt in a row without a new checkpoint; next attempt in 0.1 s)"
    ), rolled.message


async def test_an_inference_that_could_not_be_computed_ends_with_invalid_argument(world) -> None:
    _, agent, orch = world
    agent.cannot_compute = lambda position, attempt: BOOM
    xb = tensors.encode(np.ones(3))
    with pytest.raises(faults.InvalidArgument) as caught:
        await inference.infer(orch.ctx, harness.NET, {"x": xb}, seconds=10)
    assert str(caught.value) == (
        f"inference on {harness.NET!r}: vnode 'loss' replica 0 on pnode 'p1': {BOOM}"
    )
    assert caught.value.reason == "ComputeFailed"


async def test_an_input_a_source_refuses_as_invalid_ends_with_invalid_argument(world) -> None:
    _, agent, orch = world
    agent.refuse_input = "kind 'input' of 'x': tensor: dtype 'complex' cannot be read"
    with pytest.raises(faults.InvalidArgument) as caught:
        await inference.infer(orch.ctx, harness.NET, {"x": tensors.encode(np.ones(3))}, seconds=10)
    assert "INVALID_ARGUMENT: kind 'input' of 'x': tensor: dtype 'complex'" in str(caught.value)
