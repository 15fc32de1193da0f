"""The training driver against a fake agent over real gRPC, with a real SQLite store and view.

What must hold: batches follow the seeded per-epoch order; checkpoints are recorded only
once written; a moved epoch or a hung step rolls every VNode back to the last checkpoint
under a new attempt and the run ends with exactly the weights of an undisturbed run; a
restarted orchestrator resumes from stored progress; a superseded driver stops without
overwriting its successor; the inbox refuses what an agent would refuse.
"""

from __future__ import annotations

import asyncio
import math
import zlib
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import numpy as np
import pytest

from api import tensors
from api.dcnr.v1 import common_pb2, vnode_pb2
from api.resources import allocation, event, job, meta
from controller.jobs import driver_calls, driver_plan
from store import base
from tests.controller.jobs import driver_harness as harness

XS = np.arange(1, 11, dtype=np.float64) / 10  # 10 rows
SPEC = {"epochs": 2, "batch_size": 4, "learning_rate": 0.5, "checkpoint_interval": 4, "seed": 7}
TOTAL = 6  # 2 epochs * ceil(10 / 4)


class World:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.orchestrators: list[harness.Orchestrator] = []

    async def start(self) -> None:
        self.store, self.view, self.agent = await harness.cluster(self.tmp, XS)

    async def orchestrator(self, replica: str = "r1", **config) -> harness.Orchestrator:
        it = harness.Orchestrator(self.store, self.view, self.tmp, replica, **config)
        await it.start()
        self.orchestrators.append(it)
        return it

    async def job(self, name: str = "fit", **spec) -> job.Job:
        record = job.Job(
            metadata=meta.ObjectMeta(name=name),
            spec=job.JobSpec(network=harness.NET, **{**SPEC, **spec}),
        )
        return await self.store.create(record)

    def reference(self, **spec) -> float:
        s = {**SPEC, **spec}
        return harness.reference_w(
            XS, seed=s["seed"], epochs=s["epochs"], batch=s["batch_size"], lr=s["learning_rate"]
        )


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    it = World(tmp_path)
    await it.start()
    try:
        yield it
    finally:
        for orch in it.orchestrators:
            await orch.close()
        await it.agent.close()
        await it.store.close()


def succeeded(j: job.Job) -> bool:
    return j.status.phase == "Succeeded"


# -- pure parts ----------------------------------------------------------------------------


def test_batches_are_the_seeded_permutation_of_each_epoch_cut_in_order() -> None:
    rows, batch = 10, 4
    for epoch in range(3):
        order = np.random.default_rng([5, epoch]).permutation(rows)
        got = [
            driver_plan.batch_indices(seed=5, epoch=epoch, k=k, batch=batch, rows=rows)
            for k in range(3)
        ]
        assert [list(g) for g in got] == [list(order[0:4]), list(order[4:8]), list(order[8:10])]
        assert all(g.dtype == np.int64 for g in got)
    first = driver_plan.batch_indices(seed=5, epoch=0, k=0, batch=4, rows=rows)
    other = driver_plan.batch_indices(seed=5, epoch=1, k=0, batch=4, rows=rows)
    assert list(first) != list(other), "every epoch must reshuffle"


@pytest.mark.parametrize(
    ("micro_batches", "rows", "parts"),
    [(1, 256, 1), (4, 256, 4), (4, 30, 3), (4, 5, 1), (64, 7, 7), (8, 12, 6), (3, 2, 2)],
)
def test_a_batch_is_cut_into_the_most_equal_parts_allowed(
    micro_batches: int, rows: int, parts: int
) -> None:
    assert driver_plan.parts(micro_batches, rows) == parts


def test_blob_text_keeps_the_digest_for_restore() -> None:
    blob = common_pb2.BlobRef(
        url="file:///b/j/loss-0/step-4.npz", sha256=b"\x01\xff" * 16, size_bytes=99
    )
    back = driver_calls.blob_ref(driver_calls.blob_text(blob))
    assert back == blob
    assert driver_calls.blob_ref("file:///plain.npz") == common_pb2.BlobRef(url="file:///plain.npz")


# -- training ------------------------------------------------------------------------------


async def test_a_run_feeds_seeded_batches_checkpoints_and_succeeds(world) -> None:
    orch = await world.orchestrator()
    await world.job()
    await orch.loop.reconcile("fit")
    done = await orch.until("fit", succeeded)

    status = done.status
    assert (status.step, status.total_steps, status.epoch) == (TOTAL, TOTAL, 2)
    assert (status.attempt, status.driver, status.message) == (1, "r1", "")
    assert status.checkpoint_step == TOTAL
    assert list(status.checkpoint_blobs) == ["lin.loss.0"], "x is stateless: no blob"
    assert status.checkpoint_blobs["lin.loss.0"].startswith(
        f"file://{world.tmp}/blobs/fit/loss-0/step-6.npz#sha256="
    )
    assert status.loss is not None
    assert math.isfinite(status.loss)
    assert status.accuracy is None, "NaN accuracy (no labels) is not reported"
    assert status.samples_per_second is not None
    assert status.samples_per_second > 0

    expected = []
    for epoch in range(2):
        order = np.random.default_rng([7, epoch]).permutation(10)
        expected += [list(order[k * 4 : (k + 1) * 4]) for k in range(3)]
    assert [b for _, _, b in world.agent.batches] == expected
    assert [s for s, _, _ in world.agent.batches] == list(range(1, TOTAL + 1))
    assert sorted(world.agent.checkpoints) == sorted(
        [(v, s) for v in ("x", "loss") for s in (4, 6)]
    )
    assert sorted(world.agent.restores) == [("loss", 0, 1, ""), ("x", 0, 1, "")]
    assert world.agent.w == pytest.approx(world.reference(), rel=1e-12)
    # The loop keeps no task for a finished job.
    await orch.loop.reconcile("fit")
    assert orch.loop.running() == []


async def test_a_pipelined_run_sends_each_step_in_equal_parts_and_waits_for_all(world) -> None:
    orch = await world.orchestrator()
    await world.job(micro_batches=2)
    await orch.loop.reconcile("fit")
    done = await orch.until("fit", succeeded)
    assert (done.status.step, done.status.attempt) == (TOTAL, 1)
    expected = []
    for epoch in range(2):
        order = np.random.default_rng([7, epoch]).permutation(10)
        for k in range(3):  # batches of 4, 4 and 2 rows: two parts each, in order
            batch = list(order[k * 4 : (k + 1) * 4])
            half = len(batch) // 2
            expected += [batch[:half], batch[half:]]
    assert [b for _, _, b in world.agent.batches] == expected
    assert world.agent.parts == [(s, p, 2) for s in range(1, TOTAL + 1) for p in (0, 1)]


async def test_a_part_that_times_out_rolls_the_step_back_naming_the_part(world) -> None:
    orch = await world.orchestrator(step_timeout=0.5)
    world.agent.hold = lambda step, attempt: step == 2 and attempt == 1
    await world.job(micro_batches=2)
    await orch.loop.reconcile("fit")
    rolled = await orch.until("fit", lambda j: "step 2 timed out" in j.status.message)
    assert "loss (forward) of part 0" in rolled.status.message
    assert "loss (forward) of part 1" in rolled.status.message
    done = await orch.until("fit", succeeded)
    assert done.status.attempt == 2


async def test_an_epoch_change_rolls_every_vnode_back_to_the_checkpoint(world) -> None:
    # A step timeout far beyond the wait below: only the epoch watch can roll back in time.
    orch = await world.orchestrator(step_timeout=600.0)

    async def replace_loss(step: int, attempt: int) -> None:
        if (step, attempt) == (5, 1):
            # The loss VNode's PNode re-registered: a fresh instance at a new epoch.
            world.agent.epochs["loss"] = await harness.move_slot(world.store, world.view, "loss")
            world.agent.w = 999.0

    world.agent.on_batch = replace_loss
    world.agent.hold = lambda step, attempt: (step, attempt) == (5, 1)
    await world.job()
    await orch.loop.reconcile("fit")
    done = await orch.until("fit", succeeded, seconds=60)

    assert done.status.attempt == 2
    step4 = done.status.checkpoint_blobs  # recorded again at step 6 by attempt 2
    assert step4["lin.loss.0"].startswith(f"file://{world.tmp}/blobs/fit/loss-0/step-6.npz")
    rollback = [r for r in world.agent.restores if r[2] == 2]
    assert sorted((v, s) for v, s, _, _ in rollback) == [("loss", 4), ("x", 4)]
    loss_blob = next(url for v, _, _, url in rollback if v == "loss")
    assert loss_blob == f"file://{world.tmp}/blobs/fit/loss-0/step-4.npz"
    assert [s for s, a, _ in world.agent.batches if a == 2] == [5, 6]
    assert world.agent.w == pytest.approx(world.reference(), rel=1e-12)


async def test_a_checkpoint_is_not_recorded_once_the_store_shows_a_slot_moved(world) -> None:
    # The view lags the store: loss was re-placed (epoch 2 stored) while the old instance
    # still answers at epoch 1, so nothing the driver sees has moved. Peers resolve the
    # stored epoch, so part of the interval may have run at the fresh instance: the state
    # written at step 4 must not become the run's checkpoint.
    orch = await world.orchestrator()
    moved: list[int] = []

    async def move_in_the_store_only(step: int, attempt: int) -> None:
        if (step, attempt) == (4, 1):
            record = await world.store.get(allocation.Allocation, "lin.loss.0")
            record.spec.epoch += 1
            moved.append((await world.store.update(record)).spec.epoch)

    world.agent.on_batch = move_in_the_store_only
    await world.job()
    await orch.loop.reconcile("fit")
    rolled = await orch.until("fit", lambda j: "lin.loss.0: epoch 1 → epoch 2" in j.status.message)
    assert moved == [2]
    assert "checkpoint of step 4: moved" in rolled.status.message
    assert rolled.status.checkpoint_step == 0, "the step-4 state was not recorded"
    # The view catches up and the agent serves the new instance: the run completes.
    world.agent.epochs["loss"] = 2
    await world.view.refresh()
    done = await orch.until("fit", succeeded, seconds=60)
    assert done.status.checkpoint_epochs["lin.loss.0"] == 2
    assert world.agent.w == pytest.approx(world.reference(), rel=1e-12)


async def test_a_step_that_times_out_rolls_back_and_the_run_still_matches(world) -> None:
    orch = await world.orchestrator(step_timeout=0.5)
    world.agent.hold = lambda step, attempt: (step, attempt) == (3, 1)
    await world.job(checkpoint_interval=2)
    await orch.loop.reconcile("fit")
    paused = await orch.until("fit", lambda j: j.status.attempt == 2)
    assert "step 3 timed out" in paused.status.message
    assert "loss (forward)" in paused.status.message
    assert "x (backward)" in paused.status.message
    done = await orch.until("fit", succeeded)
    assert done.status.attempt == 2
    await orch.events.flush()
    told = await base.list_all(world.store, event.Event, index=("object", "Job/fit"))
    assert sorted((e.reason, e.message) for e in told if e.reason != "RolledBack") == [
        ("Started", "attempt 1 driven by replica r1, from step 0"),
        ("Succeeded", "trained 6 steps"),
    ]
    rolled = next(e for e in told if e.reason == "RolledBack")
    assert rolled.type == "Warning"
    assert rolled.message.startswith("rolled back to step 2: step 3 timed out"), rolled.message
    assert sorted((v, s) for v, s, a, _ in world.agent.restores if a == 2) == [
        ("loss", 2),
        ("x", 2),
    ]
    assert world.agent.w == pytest.approx(world.reference(checkpoint_interval=2), rel=1e-12)


async def test_rollbacks_without_a_checkpoint_are_counted_reported_and_backed_off(
    world,
) -> None:
    """Steps replayed after a rollback are not progress; a recorded checkpoint is. Each
    attempt that rolls back without one waits twice as long as the last, up to the cap,
    and the job says how many there were and why (condition Progressing, events)."""
    orch = await world.orchestrator(
        step_timeout=0.3, attempt_backoff=0.01, attempt_backoff_max=0.02
    )
    # Steps 1 and 2 complete every time; step 3 hangs in attempts 1-3, before the first
    # checkpoint (step 4): three attempts that replay the same steps.
    world.agent.hold = lambda step, attempt: step == 3 and attempt <= 3
    await world.job()
    await orch.loop.reconcile("fit")
    stalled = await orch.until("fit", lambda j: j.status.attempts_without_progress == 3)
    (cond,) = [c for c in stalled.status.conditions if c.type == "Progressing"]
    assert (cond.status, cond.reason) == ("False", "RollingBack")
    assert cond.message.startswith("3 attempts in a row rolled back to step 0 without")
    assert "step 3 timed out" in cond.message
    done = await orch.until("fit", succeeded)
    assert done.status.attempt == 4
    assert done.status.attempts_without_progress == 0
    (cond,) = [c for c in done.status.conditions if c.type == "Progressing"]
    assert (cond.status, cond.reason) == ("True", "Checkpointed")
    await orch.events.flush()
    told = await base.list_all(world.store, event.Event, index=("object", "Job/fit"))
    rolled = [e.message for e in told if e.reason == "RolledBack"]
    assert [m.split(": step 3 timed out", 1)[0] for m in rolled] == ["rolled back to step 0"] * 3
    tails = sorted(m.rsplit("(", 1)[1] for m in rolled)
    assert tails == [
        "1 attempt in a row without a new checkpoint; next attempt in 0.01 s)",
        "2 attempts in a row without a new checkpoint; next attempt in 0.02 s)",
        "3 attempts in a row without a new checkpoint; next attempt in 0.02 s)",
    ]
    assert world.agent.w == pytest.approx(world.reference(), rel=1e-12)


async def test_a_restarted_orchestrator_resumes_from_stored_progress(world) -> None:
    first = await world.orchestrator("r1")
    world.agent.hold = lambda step, attempt: attempt == 1 and step == 5
    await world.job()
    await first.loop.reconcile("fit")
    await asyncio.wait_for(world.agent.saw(5, 1).wait(), 30)
    await first.close()  # the replica dies mid-step; its driver task goes with it
    world.orchestrators.remove(first)
    stored = await world.store.get(job.Job, "fit")
    assert (stored.status.checkpoint_step, stored.status.phase) == (4, "Running")

    second = await world.orchestrator("r2")
    await second.loop.reconcile("fit")
    done = await second.until("fit", succeeded)
    assert (done.status.attempt, done.status.driver) == (2, "r2")
    assert sorted((v, s) for v, s, a, _ in world.agent.restores if a == 2) == [
        ("loss", 4),
        ("x", 4),
    ]
    assert world.agent.w == pytest.approx(world.reference(), rel=1e-12)


async def test_a_superseded_driver_stops_without_overwriting_its_successor(world) -> None:
    orch = await world.orchestrator(step_timeout=0.5)
    world.agent.hold = lambda step, attempt: step == 2
    await world.job()
    await orch.loop.reconcile("fit")
    await asyncio.wait_for(world.agent.saw(2, 1).wait(), 30)
    taken = await world.store.get(job.Job, "fit")
    taken.status.attempt, taken.status.driver = 2, "elsewhere"
    taken = await world.store.update(taken)

    (task,) = orch.loop._tasks.values()
    await asyncio.wait_for(task, 30)  # times out at step 2, tries to write, is fenced
    after = await world.store.get(job.Job, "fit")
    assert after.metadata.resource_version == taken.metadata.resource_version
    assert (after.status.attempt, after.status.driver) == (2, "elsewhere")


async def test_a_network_not_ready_pauses_the_job_until_its_slots_are_live(world) -> None:
    orch = await world.orchestrator()
    gone = await world.store.get(allocation.Allocation, "lin.loss.0")
    await world.store.delete(allocation.Allocation, "lin.loss.0")
    world.view.apply_deleted(allocation.Allocation, "lin.loss.0")
    await world.job()
    await orch.loop.reconcile("fit")
    paused = await orch.until("fit", lambda j: j.status.phase == "Paused")
    assert "1/2 slots live" in paused.status.message
    assert "lin.loss.0" in paused.status.message
    assert world.agent.restores == [], "nothing is restored before the network is Ready"

    gone.metadata = meta.ObjectMeta(name=gone.name)
    world.view.apply_written([await world.store.create(gone)])
    done = await orch.until("fit", succeeded)
    assert done.status.attempt == 1
    assert world.agent.w == pytest.approx(world.reference(), rel=1e-12)


async def test_a_source_without_data_fails_the_job_naming_it(world) -> None:
    orch = await world.orchestrator()
    net = await world.store.get(harness.Network, harness.NET)
    net.spec.vnodes[0].data = None
    world.view.apply_written([await world.store.update(net)])
    await world.job()
    await orch.loop.reconcile("fit")
    failed = await orch.until("fit", lambda j: j.status.phase == "Failed")
    assert "'x'" in failed.status.message
    assert "without data" in failed.status.message


async def test_a_vnode_that_cannot_start_fails_the_job_with_its_reason(world) -> None:
    orch = await world.orchestrator(attempt_backoff=0.01, vnode_failed_attempts=3)
    broken = await world.store.get(allocation.Allocation, "lin.loss.0")
    broken.status.phase = "Failed"  # as its agent's heartbeat reports it
    broken.status.message = "params.units: must be an integer >= 1 and <= 65536, got 0"
    world.view.apply_written([await world.store.update(broken)])
    await world.job()
    await orch.loop.reconcile("fit")
    failed = await orch.until("fit", lambda j: j.status.phase == "Failed")
    assert failed.status.message == (
        "vnode 'loss' cannot start on pnode 'p1': params.units: must be an integer >= 1 and "
        "<= 65536, got 0 (after 3 attempts)"
    )
    assert failed.status.attempt == 3
    assert world.agent.restores == [], "nothing is restored while a VNode cannot start"


async def test_cancel_stops_the_driver_and_the_phase_stays_cancelled(world) -> None:
    orch = await world.orchestrator()
    world.agent.hold = lambda step, attempt: step == 3
    await world.job()
    await orch.loop.reconcile("fit")
    await asyncio.wait_for(world.agent.saw(3, 1).wait(), 30)
    stored = await world.store.get(job.Job, "fit")
    stored.status.phase = "Cancelled"
    await world.store.update(stored)
    await orch.loop.reconcile("fit")
    assert orch.loop.running() == []
    final = await world.store.get(job.Job, "fit")
    assert final.status.phase == "Cancelled"


# -- the inbox -----------------------------------------------------------------------------


def sink_output(**fields) -> vnode_pb2.ForwardRequest:
    base = {
        "job": "fit",
        "step": 1,
        "network": harness.NET,
        "sender_vnode": "loss",
        "sender_epoch": 1,
        "target_vnode": "__driver__",
        "tensor": tensors.encode(np.array([0.5, math.nan])),
        "attempt": 1,
    }
    return vnode_pb2.ForwardRequest(**{**base, **fields})


async def code_of(call) -> grpc.StatusCode:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return caught.value.code()


async def test_the_inbox_refuses_what_an_agent_would_and_ignores_duplicates(world) -> None:
    orch = await world.orchestrator()
    stub = orch.vnodes
    box = orch.ctx.results.inbox.open(
        job="fit", network=harness.NET, attempt=1, position=1, sinks=["loss"], sources=["x"]
    )
    assert await code_of(stub.Forward(sink_output(target_vnode="fc1"))) == grpc.StatusCode.NOT_FOUND
    assert (
        await code_of(stub.Forward(sink_output(sender_epoch=7)))
        == grpc.StatusCode.FAILED_PRECONDITION
    )
    corrupt = sink_output()
    corrupt.tensor.crc32 = zlib.crc32(b"other")
    assert await code_of(stub.Forward(corrupt)) == grpc.StatusCode.DATA_LOSS
    big = sink_output(tensor=tensors.encode(np.zeros(300_000)))
    assert await code_of(stub.Forward(big)) == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert (
        await code_of(stub.Forward(sink_output(sender_vnode="x")))
        == grpc.StatusCode.INVALID_ARGUMENT
    ), "a source is not a sink"
    assert box.outputs == {}, "nothing refused was filed"

    first = await stub.Forward(sink_output())
    again = await stub.Forward(sink_output())
    assert (first.duplicate, again.duplicate) == (False, True)
    done = vnode_pb2.BackwardRequest(
        job="fit", step=1, network=harness.NET, sender_vnode="x", sender_epoch=1,
        target_vnode="__driver__", tensor=tensors.empty(), attempt=1,
    )  # fmt: skip
    assert not (await stub.Backward(done)).duplicate
    assert box.complete
    orch.ctx.results.inbox.close(box)
    assert (await stub.Backward(done)).duplicate, "a late retry of a finished step"

    orch.ctx.results.inbox.open(
        job="fit", network=harness.NET, attempt=2, position=2, sinks=["loss"]
    )
    stale = await code_of(stub.Forward(sink_output(step=2, attempt=1)))
    assert stale == grpc.StatusCode.FAILED_PRECONDITION
    unexpected = await code_of(stub.Forward(sink_output(job="other")))
    assert unexpected == grpc.StatusCode.FAILED_PRECONDITION
    restore = vnode_pb2.RestoreRequest(vnode="fc1")
    assert await code_of(stub.Restore(restore)) == grpc.StatusCode.NOT_FOUND
