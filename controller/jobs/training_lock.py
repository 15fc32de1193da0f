"""One training run per network: creating a training Job claims its network's TrainingLock.

Two runs on one network would interleave their updates to the same VNodes' weights and both
report success, so a second Train is refused while the first is not final, with the reason
and the way out (cancel the first). Refusing rather than queueing: a queue would need its
own ordering, timeouts and cancellation, and a user who sees the refusal can decide.

The check must hold across orchestrator replicas. A read of "is there a running job of this
network" followed by a create is a race two replicas can both win, so the decision is the
store's: the Job is created in one transaction with the claim of the lock (named like the
network), either a create of a lock that does not exist or an update of one, conditioned on
the version read, whose job has ended or is gone. Of two racing Train calls one transaction
fails its condition; that one re-reads, finds the winner's job running and is refused.

A cancelled job is final at once, so the network is free at once; the cancelled run's
driver stops at its next conditional write (at once on the replica that took the
CancelJob, whose job loop is told), so a run started right after a cancel can overlap the
old one by at most one step of a driver on another replica.

Nothing releases a lock: a lock whose job is final or deleted is free, so no crash, cancel
or forgotten cleanup can leave a network locked. Only training jobs take it; inference runs
in the call and reads weights without writing them.
"""

from __future__ import annotations

from api.resources import job as job_model
from api.resources import meta
from controller import errors as faults
from controller.jobs import job_watch
from store import base, errors, retry

Job = job_model.Job
TrainingLock = job_model.TrainingLock


async def create(store: base.Store, job: Job) -> Job:
    """Create the training `job` and claim its network; FailedPrecondition (reason
    `NetworkBusy`) naming the running job when the network has one. AlreadyExists when a
    job of that name exists (the caller may recognize its own retried request)."""
    network = job.spec.network

    async def attempt() -> Job:
        try:
            lock: TrainingLock | None = await store.get(TrainingLock, network)
        except errors.NotFound:
            lock = None
        if lock is None:
            spec = job_model.TrainingLockSpec(job=job.name)
            claim: base.Op = base.Create(
                TrainingLock(metadata=meta.ObjectMeta(name=network), spec=spec)
            )
        else:
            holder = await _holder(store, lock)
            if holder is not None:
                raise busy(network, holder)
            taken = lock.model_copy(deep=True)
            taken.spec.job = job.name
            claim = base.Update(taken)
        try:
            written = await store.transact([claim, base.Create(job)])
        except errors.AlreadyExists as exc:
            if exc.op_index == 1:
                raise  # the job's name is taken: the caller's concern
            # Another Train created the lock first: a conflict like any other, read again.
            raise errors.Conflict(str(exc), kind=exc.kind, name=exc.name) from exc
        created = written[1]
        assert isinstance(created, Job)
        return created

    return await retry.retry_on_conflict(attempt, what=f"claim network {network!r} for training")


async def _holder(store: base.Store, lock: TrainingLock) -> Job | None:
    """The job holding the lock, if it still does: it exists and is not final."""
    try:
        held = await store.get(Job, lock.spec.job)
    except errors.NotFound:
        return None
    if held.spec.network != lock.name or held.status.phase in job_watch.FINAL_PHASES:
        return None  # ended, or a later job of that name on another network
    return held


def busy(network: str, holder: Job) -> faults.FailedPrecondition:
    return faults.FailedPrecondition(
        f"network {network!r} is busy: job {holder.name!r} is {holder.status.phase};"
        f" cancel it with dcnctl delete job {holder.name}",
        reason="NetworkBusy",
    )
