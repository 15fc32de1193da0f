"""The training driver: runs one Job's steps by sending and receiving messages, never computing.

One run (a task the job loop keeps on the replica that owns the job) goes:

1. claim: bump `status.attempt` with a conditional write; losing it means another driver
   took the job, so this one stops;
2. wait until every slot of the network has a live endpoint (phase Paused, saying which
   slots are missing, while not), then ask the agents hosting the sources how many samples
   their data holds (controller.jobs.driver_data: the orchestrator never reads data), which
   cuts the epochs into batches;
3. Restore every replica of every VNode to `checkpoint_step` (its VNode's one blob, or
   fresh from the seed), with the optimizer, the attempt, its neighbours' replica counts
   and, for a source, the job's own data when it has some (`train --data`), and pin the
   epochs it restored;
4. step s = checkpoint_step+1 … total: send the batch's row indices to every replica of
   every source and wait until every sink replica's Forward and every source replica's
   Backward arrived; the sinks' replicas are compared there (controller.jobs.driver_inbox).
   With `micro_batches` N > 1 the batch is cut into N equal parts (`driver_plan.parts`),
   each a position of its own with a mailbox of its own, and each part is sent as soon as
   the sources took the one before, so parts are in flight together (GPipe): the step is
   done when every part's mailbox is complete (the VNodes apply their summed gradients once,
   after the last part: agent.vnode, "Micro-batches"), and fails when any part fails;
5. every `checkpoint_interval` steps and at the end, Checkpoint every replica and record the
   step and each VNode's majority blob only when all succeeded (controller.jobs.driver_checkpoint);
   progress is written at most every `progress_every` seconds, at checkpoints and at the end.

Redundancy (network `validation`, `replicas`): a dispute — replicas of a VNode disagreeing
with no majority, in a sink's output, an agent's report or a checkpoint — requests a
tiebreaker replica for that VNode (controller.trust.tiebreak) and rolls back; the next attempt's
plan includes it. A recorded checkpoint whose interval saw no disagreement at all clears
the network's tiebreakers (removing a slot then rolls back once, to that checkpoint).

A step that times out, a send that fails, or any slot's epoch moving (watched through the
view's network signal) rolls back: a new attempt (1), Paused until Ready (2), every VNode
restored to the same checkpoint (3), and on. Progress is a recorded checkpoint, not a
completed step (those are replayed after a rollback): attempts that roll back without one
wait a capped exponential backoff (`attempt_backoff` doubling up to `attempt_backoff_max`)
and are counted in `status.attempts_without_progress`, with the last reason in the
condition Progressing=False (reason RollingBack) and each RolledBack event; the next
checkpoint sets Progressing=True (reason Checkpointed) and the count back to 0.

A VNode that cannot start (its agent reports the allocation Failed, with the reason) rolls
back too, but only `vnode_failed_attempts` times in a row: then the job ends Failed with that
reason, since replaying cannot fix it. VNodes refuse messages of older attempts, so nothing
from the abandoned attempt interferes.

Stale-driver safety: every Job write is conditional. On a Conflict the record is re-read;
if its attempt or driver is no longer ours, or it reached a final phase (CancelJob), the
run stops (`Fenced`). Two drivers of one job can overlap only until the older one writes.
"""

from __future__ import annotations

import dataclasses
import datetime
import logging
import math
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

from api import messages, tensors
from api.resources import allocation, meta
from api.resources import job as job_model
from controller.jobs import (
    driver_calls,
    driver_context,
    driver_data,
    driver_inbox,
    driver_plan,
    job_watch,
    model_state,
)
from controller.runtime import signal as signal_mod
from controller.state import view as view_mod
from controller.trust import book as trust
from store import errors, retry

log = logging.getLogger("dcnr.driver")

Job = job_model.Job
FINAL_PHASES = job_watch.FINAL_PHASES
#: The Job condition that says whether the run records checkpoints (module docstring).
PROGRESSING = "Progressing"


DriverConfig = driver_context.DriverConfig
DriverContext = driver_context.DriverContext


class Fenced(Exception):
    """This run no longer owns the job (another attempt, a cancel, a deletion): stop."""


Rollback = driver_calls.Rollback
JobFailed = driver_plan.JobFailed
Plan = driver_plan.Plan


@dataclasses.dataclass
class _Window:
    """Progress since the last write: mean loss and accuracy, samples per second."""

    started: float
    samples: int = 0
    losses: list[float] = dataclasses.field(default_factory=list)
    accuracies: list[float] = dataclasses.field(default_factory=list)

    def fold(self, status: job_model.JobStatus, now: float) -> None:
        if self.losses:
            status.loss = float(np.mean(self.losses))
        if self.accuracies:
            status.accuracy = float(np.mean(self.accuracies))
        elapsed = now - self.started
        if elapsed > 0 and self.samples:
            status.samples_per_second = self.samples / elapsed


class TrainingRun:
    def __init__(self, ctx: DriverContext, name: str) -> None:
        self.ctx = ctx
        self.name = name
        self.job: Job | None = None
        self.attempt = 0
        self._orders: dict[int, np.ndarray[Any, Any]] = {}
        #: A checkpoint was recorded since the last rollback (module docstring).
        self._progressed = False
        #: Attempts in a row that rolled back without recording a checkpoint.
        self._stalled = 0
        #: Attempts in a row that found a VNode unable to start (DriverConfig).
        self._failed_attempts = 0

    async def run(self) -> None:
        try:
            await self._run()
        except Fenced as stop:
            log.info("driver stops", extra={"fields": {"job": self.name, "reason": str(stop)}})
        finally:
            self.ctx.results.inbox.forget(self.name)

    @property
    def _job(self) -> Job:
        assert self.job is not None
        return self.job

    async def _run(self) -> None:
        try:
            self.job = await self.ctx.store.get(Job, self.name)
        except errors.NotFound:
            return
        if self._job.status.phase in FINAL_PHASES or self._job.spec.type != "train":
            return
        await self._claim()
        backoff = self.ctx.config.attempt_backoff
        while True:
            try:
                net = self.ctx.view.networks.get(self._job.spec.network)
                if net is None or net.metadata.deletion_timestamp is not None:
                    raise JobFailed(f"network {self._job.spec.network!r} was deleted")
                data = driver_plan.source_data(self._job, net)
                slots = driver_plan.slots(net)
                self._check_started(slots)
                await self._wait_ready(net.name, slots)
                answers = await driver_data.ask(
                    self.ctx.client,
                    self.ctx.clock,
                    net=net,
                    data=data,
                    override=self._job.spec.data,
                    seconds=self.ctx.config.step_timeout,
                )
                rows = driver_data.samples(answers, network=net.name)
                plan = driver_plan.make_plan(self._job, net, rows=rows)
                calls = driver_calls.Calls(
                    client=self.ctx.client,
                    view=self.ctx.view,
                    clock=self.ctx.clock,
                    job=self._job,
                    attempt=self.attempt,
                    plan=plan,
                    reply_to=await self.ctx.reply_to.wait(),
                    step_timeout=self.ctx.config.step_timeout,
                    blob_store=self.ctx.config.blob_store,
                )
                await calls.restore()
                await self._write(_running(plan))
                await self._train(plan, calls)
                return
            except JobFailed as failed:
                await self._write(_final("Failed", str(failed)))
                self._tell("Warning", "Failed", str(failed))
                return
            except Rollback as why:
                if isinstance(why, driver_calls.Disputed):
                    self._strike_forged(why.forged)
                    await self.ctx.tiebreakers.request(self._job.spec.network, why.vnode)
                if self._progressed:  # it worked for a while: not a failure loop
                    backoff, self._progressed = self.ctx.config.attempt_backoff, False
                    self._failed_attempts = self._stalled = 0
                self._stalled += 1
                log.warning(
                    "rolling back",
                    extra={
                        "fields": {
                            "job": self.name, "reason": str(why),
                            "attempts_without_progress": self._stalled, "backoff": backoff,
                        }
                    },
                )  # fmt: skip
                await self._next_attempt(str(why), stalled=self._stalled, backoff=backoff)
                self._tell(
                    "Warning", "RolledBack",
                    f"rolled back to step {self._job.status.checkpoint_step}: {why}"
                    f" ({_attempts(self._stalled)} in a row without a new checkpoint;"
                    f" next attempt in {backoff:g} s)",
                )  # fmt: skip
                await self.ctx.clock.sleep(backoff)
                backoff = min(backoff * 2, self.ctx.config.attempt_backoff_max)

    # -- attempts -------------------------------------------------------------------------

    async def _claim(self) -> None:
        job = self._job.model_copy(deep=True)
        job.status.attempt += 1
        job.status.driver = self.ctx.replica_id
        if job.status.phase == "Pending":
            job.status.phase = "Running"
        try:
            self.job = await self.ctx.store.update(job)
        except (errors.Conflict, errors.NotFound):
            raise Fenced("another driver claimed the job first") from None
        self.attempt = self._job.status.attempt
        self.ctx.feed.published(self._job)
        self._tell(
            "Normal", "Started",
            f"attempt {self.attempt} driven by replica {self.ctx.replica_id}, from step"
            f" {self._job.status.checkpoint_step}",
        )  # fmt: skip

    def _tell(self, type_: str, reason: str, message: str) -> None:
        if self.ctx.events is not None:
            self.ctx.events.record("Job", self.name, type=type_, reason=reason, message=message)

    async def _next_attempt(self, reason: str, *, stalled: int, backoff: float) -> None:
        nxt = self.attempt + 1
        now = self.ctx.clock.now()

        def change(status: job_model.JobStatus) -> None:
            status.attempt = nxt
            status.phase = "Paused"
            status.message = f"rolling back to step {status.checkpoint_step}: {reason}"
            status.attempts_without_progress = stalled
            status.conditions = meta.set_condition(
                status.conditions,
                type=PROGRESSING,
                status="False",
                reason="RollingBack",
                message=messages.clip(
                    f"{_attempts(stalled)} in a row rolled back to step "
                    f"{status.checkpoint_step} without recording a checkpoint; next attempt "
                    f"in {backoff:g} s; last reason: {reason}"
                ),
                now=now,
            )

        await self._write(change)
        self.attempt = nxt

    async def _write(self, change: Callable[[job_model.JobStatus], None]) -> None:
        """Apply `change` to the Job's status with a conditional write, re-reading on
        Conflict (`store.retry`); Fenced when the job is no longer this run's, or kept
        changing under every attempt."""

        async def attempt() -> None:
            updated = self._job.model_copy(deep=True)
            change(updated.status)
            try:
                self.job = await self.ctx.store.update(updated)
            except errors.NotFound:
                raise Fenced("the job was deleted") from None
            except errors.Conflict:
                await self._reread()  # Fenced when it is no longer ours; else try again
                raise
            self.ctx.feed.published(self._job)

        try:
            await retry.retry_on_conflict(attempt, what=f"write the status of job {self.name!r}")
        except retry.Exhausted as exc:
            raise Fenced(str(exc)) from exc

    async def _reread(self) -> None:
        """The stored Job, unless it is no longer this run's (Fenced)."""
        try:
            fresh = await self.ctx.store.get(Job, self.name)
        except errors.NotFound:
            raise Fenced("the job was deleted") from None
        status = fresh.status
        if status.attempt != self.attempt or status.driver != self.ctx.replica_id:
            raise Fenced(f"attempt {status.attempt} of driver {status.driver!r} took over")
        if status.phase in FINAL_PHASES:
            raise Fenced(f"the job is {status.phase}")
        self.job = fresh

    def _check_started(self, slots: tuple[str, ...]) -> None:
        """Roll back while a VNode reports it cannot start; fail the job once that has
        lasted `vnode_failed_attempts` attempts (module docstring)."""
        failed = not_started(self.ctx.view, slots)
        if not failed:
            return
        self._failed_attempts += 1
        limit = self.ctx.config.vnode_failed_attempts
        if self._failed_attempts >= limit:
            raise JobFailed(f"{failed[0]} (after {self._failed_attempts} attempts)")
        raise Rollback(f"{failed[0]} (attempt {self._failed_attempts} of {limit})")

    async def _wait_ready(self, network: str, slots: tuple[str, ...]) -> None:
        clock, view = self.ctx.clock, self.ctx.view
        signal = view.network_signal(network)
        while True:
            seen = signal.value
            now = clock.now()
            suspects = set(self.ctx.suspects.holding(slots))
            missing = [
                slot
                for slot in slots
                if not _live(view, current := view.allocations.get(slot), now)
                or (current is not None and current.spec.pnode in suspects)
            ]
            if not missing:
                return
            message = (
                f"waiting for network {network!r}: {len(slots) - len(missing)}/"
                f"{len(slots)} slots live; not live: {', '.join(missing[:10])}"
            )
            if self._job.status.phase != "Paused" or self._job.status.message != message:
                await self._write(_paused(message))
            else:
                await self._reread()  # notices a cancel while nothing else is written
            await driver_inbox.first_of(
                clock, [signal.wait_past(seen)], seconds=self.ctx.config.ready_recheck
            )

    # -- steps ----------------------------------------------------------------------------

    async def _train(self, plan: Plan, calls: driver_calls.Calls) -> None:
        ctx, config = self.ctx, self.ctx.config
        spec = self._job.spec
        window = _Window(ctx.clock.monotonic())
        last_write = ctx.clock.monotonic()
        #: Disagreements seen before this checkpoint interval began.
        clean_since = ctx.results.inbox.disagreements(self.name)
        for step in range(self._job.status.checkpoint_step + 1, plan.total + 1):
            epoch, k = divmod(step - 1, plan.steps_per_epoch)
            indices = self._batch(plan, epoch, k)
            suspects = ctx.suspects.holding(plan.slots)
            if suspects:  # wait (Paused) until their slots have moved, not feed them on
                raise Rollback(f"step {step}: pnode {', '.join(suspects)} is being marked Bugged")
            parts = driver_plan.parts(plan.micro_batches, len(indices))
            changed = signal_mod.Signal(ctx.clock)  # one for the step's parts
            boxes = [
                ctx.results.inbox.open(
                    job=self.name,
                    network=plan.network,
                    attempt=self.attempt,
                    position=step if parts == 1 else (step, part),
                    sinks={s: plan.replicas_of(s) for s in plan.sinks},
                    sources={s: plan.replicas_of(s) for s in plan.sources},
                    changed=changed,
                )
                for part in range(parts)
            ]
            try:
                await calls.step(boxes, step, indices)
            finally:
                for box in boxes:
                    ctx.results.inbox.close(box)
            self._credit(plan, set().union(*(box.struck for box in boxes)))
            window.samples += len(indices)
            for box in boxes:  # equal parts: the mean of theirs is the step's
                _collect(box, window)
            done_epoch = epoch + 1
            checkpoint = step % spec.checkpoint_interval == 0 or step == plan.total
            now = ctx.clock.monotonic()
            if checkpoint:
                written = await calls.checkpoint(step)
                # The view may lag the store: a slot already re-placed there may have taken
                # part of this interval at a fresh instance (agents resolve the current
                # epoch), so the state just written is recorded only if none moved.
                moved = await model_state.moved(ctx.store, calls.epochs)
                if moved:
                    raise Rollback(f"checkpoint of step {step}: moved {', '.join(moved)}")
                await self._write(
                    _progress(
                        step, done_epoch, window, now, blobs=written.blobs, epochs=calls.epochs,
                        checkpointed_at=ctx.clock.now(),
                    )
                )  # fmt: skip
                self._progressed = True
                self._strike_forged(written.forged)
                if written.outliers:
                    ctx.results.inbox.disagreed(self.name, len(written.outliers))
                    if ctx.results.metrics is not None:
                        ctx.results.metrics.disagreed(len(written.outliers))
                seen = ctx.results.inbox.disagreements(self.name)
                if seen == clean_since:
                    await self._clear_tiebreakers(plan)
                clean_since = seen
            elif now - last_write >= config.progress_every:
                await self._write(_progress(step, done_epoch, window, now))
            else:
                continue
            window, last_write = _Window(now), now
        await self._write(_final("Succeeded", ""))
        self._tell("Normal", "Succeeded", f"trained {plan.total} steps")

    async def _clear_tiebreakers(self, plan: Plan) -> None:
        net = self.ctx.view.networks.get(plan.network)
        if net is not None and net.status.tiebreakers:
            await self.ctx.tiebreakers.clear(plan.network)

    def _credit(self, plan: Plan, struck: set[str]) -> None:
        """A completed step: every result of it passed the checks (and, with replicas, the
        vote), so each PNode that computed one earns a valid result — except those whose
        result lost a comparison in it."""
        book = self.ctx.results.book
        if book is None:
            return
        for slot in plan.slots:
            current = self.ctx.view.allocations.get(slot)
            if current is not None and current.spec.pnode not in struck:
                book.record(current.spec.pnode, trust.Outcome(valid=True, job=self.name))

    def _strike_forged(self, slots: tuple[str, ...]) -> None:
        """A checkpoint blob whose bytes do not hash to the digest its writer claimed is a
        provable lie (`controller.jobs.driver_checkpoint`): strike the PNode that wrote it."""
        book = self.ctx.results.book
        for slot in slots:
            current = self.ctx.view.allocations.get(slot)
            if book is None or current is None:
                continue
            book.record(
                current.spec.pnode,
                trust.Outcome(
                    valid=False,
                    job=self.name,
                    vnode=current.spec.vnode,
                    check="checkpoint-digest",
                    message=f"checkpoint of {slot}: the blob's bytes do not match the "
                    "sha256 its writer claimed",
                ),
            )

    def _batch(self, plan: Plan, epoch: int, k: int) -> np.ndarray[Any, Any]:
        order = self._orders.get(epoch)
        if order is None:
            order = driver_plan.epoch_order(seed=self._job.spec.seed, epoch=epoch, rows=plan.rows)
            self._orders = {epoch: order}
        return order[k * plan.batch : (k + 1) * plan.batch]


def _live(view: view_mod.View, slot: allocation.Allocation | None, now: Any) -> bool:
    if slot is None:
        return False
    node = view.pnodes.get(slot.spec.pnode)
    return (
        node is not None
        and node.status.incarnation == slot.spec.pnode_incarnation
        and view.is_live(slot.spec.pnode, now)
    )


def not_started(view: view_mod.View, slots: Iterable[str]) -> list[str]:
    """Why each slot whose agent reported that its VNode cannot start (allocation Failed,
    for the slot's current epoch: `controller.state.allocation_status`) is not running."""
    found = []
    for name in slots:
        slot = view.allocations.get(name)
        if slot is not None and slot.status.phase == "Failed":
            found.append(
                f"vnode {slot.spec.vnode!r} cannot start on pnode {slot.spec.pnode!r}: "
                f"{slot.status.message or 'no reason given'}"
            )
    return found


def _collect(box: driver_inbox.Mailbox, window: _Window) -> None:
    """A sink's float64 [loss, accuracy] output counts toward progress (losses emit that)."""
    for tensor in box.outputs.values():
        if tensor.dtype != "float64" or list(tensor.shape) != [2]:
            continue
        loss, accuracy = (float(v) for v in tensors.decode(tensor))
        if math.isfinite(loss):
            window.losses.append(loss)
        if math.isfinite(accuracy):
            window.accuracies.append(accuracy)


def _attempts(count: int) -> str:
    return f"{count} attempt{'' if count == 1 else 's'}"


def _running(plan: Plan) -> Callable[[job_model.JobStatus], None]:
    def change(status: job_model.JobStatus) -> None:
        status.phase = "Running"
        status.message = ""
        status.total_steps = plan.total
        status.step = status.checkpoint_step

    return change


def _paused(message: str) -> Callable[[job_model.JobStatus], None]:
    def change(status: job_model.JobStatus) -> None:
        status.phase = "Paused"
        status.message = message

    return change


def _final(phase: job_model.JobPhase, message: str) -> Callable[[job_model.JobStatus], None]:
    def change(status: job_model.JobStatus) -> None:
        status.phase = phase
        status.message = message

    return change


def _progress(
    step: int,
    epoch: int,
    window: _Window,
    now: float,
    *,
    blobs: dict[str, str] | None = None,
    epochs: dict[str, int] | None = None,
    checkpointed_at: datetime.datetime | None = None,
) -> Callable[[job_model.JobStatus], None]:
    """`blobs`, `epochs`, `checkpointed_at` (wall clock): a checkpoint recorded, which is
    progress (module docstring)."""

    def change(status: job_model.JobStatus) -> None:
        status.step = step
        status.epoch = epoch
        window.fold(status, now)
        if blobs is not None:
            status.checkpoint_step = step
            status.checkpoint_blobs = dict(blobs)
            status.checkpoint_epochs = dict(epochs or {})
        if checkpointed_at is not None:
            status.attempts_without_progress = 0
            status.conditions = meta.set_condition(
                status.conditions,
                type=PROGRESSING,
                status="True",
                reason="Checkpointed",
                message=f"checkpoint recorded at step {step}",
                now=checkpointed_at,
            )

    return change
