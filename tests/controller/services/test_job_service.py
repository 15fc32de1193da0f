"""JobService over real gRPC: Train's validation and defaults, reads, watches, cancel, and
inference through the driver to a fake agent (tests/controller/jobs/driver_harness.py)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from api import tensors
from api.dcnr.v1 import common_pb2, job_pb2
from api.resources import allocation, job, lease, meta
from store import base, errors
from tests.controller.jobs import driver_harness as harness

XS = np.arange(1, 11, dtype=np.float64) / 10


class World:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp

    async def start(self) -> None:
        self.store, self.view, self.agent = await harness.cluster(self.tmp, XS)
        self.orch = harness.Orchestrator(self.store, self.view, self.tmp, "r1")
        await self.orch.start()
        self.stub = self.orch.jobs

    async def train(self, **fields) -> dict[str, Any]:
        request = job_pb2.TrainRequest(network=harness.NET, **fields)
        answer = await self.stub.Train(request, timeout=10)
        assert answer.job.kind == "Job"
        body: dict[str, Any] = json.loads(answer.job.json)
        return body

    async def cancel(self, name: str) -> None:
        await self.stub.CancelJob(job_pb2.CancelJobRequest(name=name), timeout=10)


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    it = World(tmp_path)
    await it.start()
    try:
        yield it
    finally:
        await it.orch.close()
        await it.agent.close()
        await it.store.close()


class Refusal:
    def __init__(self, error: grpc.aio.AioRpcError) -> None:
        self._error = error

    def code(self) -> grpc.StatusCode:
        return self._error.code()

    def details(self) -> str:
        return self._error.details() or ""


async def failure(call) -> Refusal:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return Refusal(caught.value)


# -- Train ---------------------------------------------------------------------------------


async def test_train_creates_a_pending_job_with_the_spec_defaults(world) -> None:
    body = await world.train(name="fit", labels={"team": "a"})
    assert body["metadata"]["name"] == "fit"
    assert body["metadata"]["labels"] == {"team": "a"}
    assert body["spec"] == {
        "network": "lin",
        "type": "train",
        "epochs": 1,
        "batchSize": 32,
        "optimizer": "sgd",
        "learningRate": 0.01,
        "checkpointInterval": 50,
        "seed": 0,
        "microBatches": 1,
    }
    assert body["status"]["phase"] == "Pending"
    stored = await world.store.get(job.Job, "fit")
    assert stored.spec.epochs == 1
    assert world.orch.changed == ["fit"], "the job loop is told at once"


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"epochs": -1}, "epochs"),
        ({"epochs": 100_001}, "epochs"),
        ({"batch_size": -5}, "batch_size"),
        ({"optimizer": "lbfgs"}, "optimizer"),
        ({"learning_rate": 11.0}, "learning_rate"),
        ({"learning_rate": -0.1}, "learning_rate"),
        ({"checkpoint_interval": -1}, "checkpoint_interval"),
        ({"seed": -3}, "seed"),
        ({"micro_batches": -2}, "micro_batches"),
        ({"micro_batches": 65, "batch_size": 65 * 2}, "micro_batches"),
        ({"micro_batches": 3, "batch_size": 32}, "micro_batches"),
        ({"name": "Not_A_Name"}, "name"),
        ({"labels": {"bad key!": "v"}}, "labels"),
        ({"data": common_pb2.DataRef(url="http://x/data.npz")}, "data.url"),
    ],
)
async def test_train_refuses_invalid_fields_naming_them(world, fields, field) -> None:
    error = await failure(world.train(**fields))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details().startswith(f"{field}: "), error.details()
    assert (await world.store.list(job.Job)).items == [], "nothing was created"


async def test_train_says_why_micro_batches_do_not_fit_the_batch(world) -> None:
    error = await failure(world.train(micro_batches=3, batch_size=32))
    assert error.details() == (
        "micro_batches: Value error, 3 does not divide batch_size 32; every micro-batch of a "
        "step must hold as many samples, got 3"
    )
    body = await world.train(name="piped", micro_batches=4, batch_size=32)
    assert body["spec"]["microBatches"] == 4


async def test_train_needs_an_existing_network(world) -> None:
    error = await failure(world.stub.Train(job_pb2.TrainRequest(network="nope")))
    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert "'nope'" in error.details()
    empty = await failure(world.stub.Train(job_pb2.TrainRequest()))
    assert empty.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert empty.details().startswith("network: ")


async def test_a_retried_train_with_the_same_request_id_finds_the_first_job(world) -> None:
    header = common_pb2.RequestHeader(request_id="req-1")
    first = await world.train(header=header, epochs=3)
    again = await world.train(header=header, epochs=3)
    assert first["metadata"]["name"] == again["metadata"]["name"]
    assert first["metadata"]["name"].startswith("lin-")
    await world.cancel(first["metadata"]["name"])  # one training job per network
    other = await world.train(header=common_pb2.RequestHeader(request_id="req-2"))
    assert other["metadata"]["name"] != first["metadata"]["name"]
    await world.cancel(other["metadata"]["name"])
    taken = await failure(world.train(name=first["metadata"]["name"]))
    assert taken.code() == grpc.StatusCode.ALREADY_EXISTS


# -- reads ---------------------------------------------------------------------------------


async def test_get_and_list_filter_by_network_and_labels_in_pages(world) -> None:
    for i in range(5):
        await world.train(name=f"job-{i}", labels={"parity": "even" if i % 2 == 0 else "odd"})
        await world.cancel(f"job-{i}")  # one training job per network at a time
    got = await world.stub.GetJob(job_pb2.GetJobRequest(name="job-3"))
    assert json.loads(got.job.json)["metadata"]["labels"] == {"parity": "odd"}
    missing = await failure(world.stub.GetJob(job_pb2.GetJobRequest(name="job-9")))
    assert missing.code() == grpc.StatusCode.NOT_FOUND

    names, token = [], ""
    while True:
        page = await world.stub.ListJobs(
            job_pb2.ListJobsRequest(network="lin", limit=2, continue_token=token)
        )
        assert len(page.items) <= 2
        names += [json.loads(d.json)["metadata"]["name"] for d in page.items]
        token = page.continue_token
        if not token:
            break
    assert names == [f"job-{i}" for i in range(5)]
    even = await world.stub.ListJobs(job_pb2.ListJobsRequest(label_selector="parity=even"))
    assert [json.loads(d.json)["metadata"]["name"] for d in even.items] == [
        "job-0",
        "job-2",
        "job-4",
    ]
    other = await world.stub.ListJobs(job_pb2.ListJobsRequest(network="elsewhere"))
    assert list(other.items) == []
    bad = await failure(world.stub.ListJobs(job_pb2.ListJobsRequest(label_selector="a in")))
    assert bad.code() == grpc.StatusCode.INVALID_ARGUMENT


# -- WatchJob and CancelJob ----------------------------------------------------------------


async def test_watch_streams_every_change_until_a_final_phase(world) -> None:
    await world.train(name="fit", epochs=1, batch_size=4, checkpoint_interval=2)
    stream = world.stub.WatchJob(job_pb2.WatchJobRequest(name="fit"), timeout=60)
    events = []
    async for response in stream:
        events.append(response.event)
        if len(events) == 1:
            await world.orch.loop.reconcile("fit")  # start the driver once watching
    kinds = [e.type for e in events]
    assert kinds[0] == common_pb2.WATCH_EVENT_TYPE_ADDED
    assert set(kinds[1:]) == {common_pb2.WATCH_EVENT_TYPE_MODIFIED}
    phases = [json.loads(e.document.json)["status"]["phase"] for e in events]
    assert (phases[0], phases[-1]) == ("Pending", "Succeeded")
    versions = [e.resource_version for e in events]
    assert versions == sorted(set(versions)), "each change once, in order"
    steps = [json.loads(e.document.json)["status"].get("step", 0) for e in events]
    assert 3 in steps, "progress of the last step was streamed"


async def test_cancel_ends_the_job_and_is_idempotent(world) -> None:
    world.agent.hold = lambda step, attempt: step == 2
    await world.train(name="fit", epochs=1, batch_size=4)
    await world.orch.loop.reconcile("fit")
    await world.agent.saw(2, 1).wait()
    answer = await world.stub.CancelJob(job_pb2.CancelJobRequest(name="fit", reason="enough"))
    body = json.loads(answer.job.json)
    assert body["status"]["phase"] == "Cancelled"
    assert body["status"]["message"] == "cancelled: enough"
    again = await world.stub.CancelJob(job_pb2.CancelJobRequest(name="fit"))
    assert json.loads(again.job.json)["status"]["message"] == "cancelled: enough"
    assert world.orch.changed == ["fit", "fit"], "Train, then the one cancel that wrote"
    await world.orch.loop.reconcile("fit")
    assert world.orch.loop.running() == []
    assert (await world.store.get(job.Job, "fit")).status.phase == "Cancelled"

    done = await world.train(name="done")
    stored = await world.store.get(job.Job, done["metadata"]["name"])
    stored.status.phase = "Succeeded"
    await world.store.update(stored)
    late = await failure(world.stub.CancelJob(job_pb2.CancelJobRequest(name="done")))
    assert late.code() == grpc.StatusCode.FAILED_PRECONDITION


async def test_delete_removes_an_ended_job_and_refuses_a_running_one(world) -> None:
    await world.train(name="fit")
    running = await failure(world.stub.DeleteJob(job_pb2.DeleteJobRequest(name="fit")))
    assert running.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert running.details() == (
        "job 'fit' is Pending; cancel it first (dcnctl delete job fit cancels a running job)"
    )
    await world.cancel("fit")
    await world.stub.DeleteJob(job_pb2.DeleteJobRequest(name="fit"))
    gone = await failure(world.stub.GetJob(job_pb2.GetJobRequest(name="fit")))
    assert gone.code() == grpc.StatusCode.NOT_FOUND
    again = await failure(world.stub.DeleteJob(job_pb2.DeleteJobRequest(name="fit")))
    assert again.code() == grpc.StatusCode.NOT_FOUND


# -- one training job per network ----------------------------------------------------------


async def test_a_second_train_on_a_busy_network_is_refused_naming_the_running_job(world) -> None:
    await world.train(name="train-1")
    busy = await failure(world.train(name="train-2"))
    assert busy.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert busy.details() == (
        "network 'lin' is busy: job 'train-1' is Pending; cancel it with dcnctl delete job"
        " train-1"
    )
    with pytest.raises(errors.NotFound):
        await world.store.get(job.Job, "train-2")
    await world.cancel("train-1")
    second = await world.train(name="train-2")
    assert second["status"]["phase"] == "Pending"
    # A deleted holder frees the network as an ended one does.
    await world.cancel("train-2")
    await world.stub.DeleteJob(job_pb2.DeleteJobRequest(name="train-2"))
    await world.train(name="train-3")


async def test_two_trains_racing_on_two_replicas_start_one_job(world) -> None:
    """Two JobServices (as on two replicas) on one store, their Trains interleaved at the
    store: the lock's conditional write lets exactly one through."""
    other = harness.Orchestrator(world.store, world.view, world.tmp, "r2")
    await other.start()
    try:
        requests = [
            stub.Train(job_pb2.TrainRequest(network=harness.NET, name=f"race-{i}"), timeout=10)
            for i, stub in enumerate([world.stub, other.jobs] * 4)
        ]
        answers = await asyncio.gather(*requests, return_exceptions=True)
    finally:
        await other.close()
    started = [a for a in answers if not isinstance(a, BaseException)]
    refused = [a for a in answers if isinstance(a, grpc.aio.AioRpcError)]
    assert len(started) == 1
    assert len(refused) == 7
    assert {r.code() for r in refused} == {grpc.StatusCode.FAILED_PRECONDITION}
    jobs = [j.name for j in await base.list_all(world.store, job.Job)]
    assert jobs == [json.loads(started[0].job.json)["metadata"]["name"]]


# -- Infer ---------------------------------------------------------------------------------


async def test_infer_sends_tensors_to_the_sources_and_returns_the_sinks(world) -> None:
    world.agent.w = 2.0
    given = tensors.encode(np.array([1.0, 2.5]))
    answer = await world.stub.Infer(
        job_pb2.InferRequest(network="lin", tensors=job_pb2.NamedTensors(tensors={"x": given})),
        timeout=10,
    )
    assert list(answer.outputs) == ["loss"]
    np.testing.assert_allclose(tensors.decode(answer.outputs["loss"]), [2.0, 5.0])


async def test_infer_on_a_data_file_feeds_each_source_its_field(world) -> None:
    world.agent.w = 3.0
    np.savez(world.tmp / "test.npz", x=np.array([1.0, 4.0]), other=np.array([9.0]))
    answer = await world.stub.Infer(
        job_pb2.InferRequest(
            network="lin", data=common_pb2.DataRef(url=f"file://{world.tmp}/test.npz")
        ),
        timeout=10,
    )
    np.testing.assert_allclose(tensors.decode(answer.outputs["loss"]), [3.0, 12.0])
    np.savez(world.tmp / "none.npz", y=np.array([1.0]))
    unnamed = await failure(
        world.stub.Infer(
            job_pb2.InferRequest(
                network="lin", data=common_pb2.DataRef(url=f"file://{world.tmp}/none.npz")
            )
        )
    )
    assert unnamed.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert unnamed.details().startswith("data.url: ")


async def test_infer_on_data_only_the_agents_can_open_is_read_by_them(world) -> None:
    """The orchestrator never opens the data: a url relative to the agent's workdir, which
    means nothing where the orchestrator runs, works; what the agent cannot read is the
    caller's mistake, in the agent's words."""
    world.agent.w = 2.0
    np.savez(world.tmp / "near-the-agent.npz", x=np.array([1.0, 4.0]))
    relative = common_pb2.DataRef(url="file://near-the-agent.npz")
    answer = await world.stub.Infer(job_pb2.InferRequest(network="lin", data=relative), timeout=10)
    np.testing.assert_allclose(tensors.decode(answer.outputs["loss"]), [2.0, 8.0])
    missing = common_pb2.DataRef(url="file://nowhere.npz")
    gone = await failure(world.stub.Infer(job_pb2.InferRequest(network="lin", data=missing)))
    assert gone.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert gone.details().startswith("data.url: ")
    assert "nowhere.npz" in gone.details()


async def test_infer_refuses_unknown_sources_corrupt_tensors_and_unready_networks(world) -> None:
    good = tensors.encode(np.array([1.0]))
    unknown = await failure(
        world.stub.Infer(
            job_pb2.InferRequest(
                network="lin", tensors=job_pb2.NamedTensors(tensors={"loss": good})
            )
        )
    )
    assert unknown.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "x" in unknown.details()
    corrupt = tensors.encode(np.array([1.0]))
    corrupt.crc32 ^= 1
    lost = await failure(
        world.stub.Infer(
            job_pb2.InferRequest(
                network="lin", tensors=job_pb2.NamedTensors(tensors={"x": corrupt})
            )
        )
    )
    assert lost.code() == grpc.StatusCode.DATA_LOSS

    expired = await world.store.get(lease.PNodeLease, "p1")
    expired.spec.renew_time = expired.spec.renew_time.replace(year=2000)
    world.view.apply_written([await world.store.update(expired)])
    unready = await failure(
        world.stub.Infer(
            job_pb2.InferRequest(network="lin", tensors=job_pb2.NamedTensors(tensors={"x": good}))
        )
    )
    assert unready.code() == grpc.StatusCode.UNAVAILABLE
    assert "not ready" in unready.details()


async def test_infer_with_no_tensors_is_refused_at_once_naming_the_field(world) -> None:
    empty = await failure(
        world.stub.Infer(job_pb2.InferRequest(network="lin", tensors=job_pb2.NamedTensors()))
    )
    assert empty.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert empty.details() == (
        "tensors: must hold a tensor for a source VNode of 'lin' (x), got {}"
    )
    assert world.agent.batches == [], "nothing was sent"


async def test_tensors_a_vnode_would_refuse_are_refused_with_its_words(world) -> None:
    net = await world.store.get(harness.Network, harness.NET)
    net.spec.vnodes[1].kind = "softmax_cross_entropy"  # the fake agent computes as before
    world.view.apply_written([await world.store.update(net)])
    flat = await failure(
        world.stub.Infer(
            job_pb2.InferRequest(
                network="lin",
                tensors=job_pb2.NamedTensors(tensors={"x": tensors.encode(np.ones(10))}),
            )
        )
    )
    assert flat.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert flat.details() == (
        "tensors: x [10]: does not fit network 'lin': vnode 'loss' (softmax_cross_entropy) "
        "would refuse it: inputs[0]: logits must have shape [batch, classes], got [10]"
    )


async def test_infer_on_a_vnode_that_cannot_start_says_why_at_once(world) -> None:
    broken = await world.store.get(allocation.Allocation, "lin.loss.0")
    broken.status.phase, broken.status.message = "Failed", "kind: unknown kind 'fake_loss'"
    world.view.apply_written([await world.store.update(broken)])
    refused = await failure(
        world.stub.Infer(
            job_pb2.InferRequest(
                network="lin",
                tensors=job_pb2.NamedTensors(tensors={"x": tensors.encode(np.ones(2))}),
            )
        )
    )
    assert refused.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert refused.details() == (
        "network 'lin' cannot answer: vnode 'loss' cannot start on pnode 'p1': kind: unknown "
        "kind 'fake_loss'"
    )


async def test_an_answer_from_an_untrained_network_carries_a_warning(world) -> None:
    world.agent.w = 2.0
    given = tensors.encode(np.array([1.0]))
    answer = await world.stub.Infer(
        job_pb2.InferRequest(network="lin", tensors=job_pb2.NamedTensors(tensors={"x": given})),
        timeout=10,
    )
    assert list(answer.warnings) == [
        "network 'lin' has not been trained (no training job of it succeeded); answers come "
        "from initial weights"
    ]
    trained = job.Job(
        metadata=meta.ObjectMeta(name="fit"),
        spec=job.JobSpec(network="lin"),
        status=job.JobStatus(
            phase="Succeeded",
            checkpoint_step=1,
            checkpoint_blobs={"lin.loss.0": "file:///nowhere/loss.npz"},
            checkpoint_epochs={"lin.x.0": 1, "lin.loss.0": 1},  # nothing moved since
        ),
    )
    await world.store.create(trained)
    answer = await world.stub.Infer(
        job_pb2.InferRequest(network="lin", tensors=job_pb2.NamedTensors(tensors={"x": given})),
        timeout=10,
    )
    assert list(answer.warnings) == []
