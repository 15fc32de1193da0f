"""Prompt job hand-offs (issue 16): each replica's poll enqueues exactly the jobs no driver
has claimed and none runs here, every `every` seconds of a fake clock, from a real SQLite
store."""

from __future__ import annotations

from pathlib import Path

from api.resources import job, meta
from controller.jobs import job_poll
from controller.runtime import clock as clock_mod
from store import sqlite
from tests.support import wait


def make_job(name: str, phase: job.JobPhase) -> job.Job:
    record = job.Job(metadata=meta.ObjectMeta(name=name), spec=job.JobSpec(network="digits"))
    record.status.phase = phase
    return record


async def test_the_poll_enqueues_unclaimed_jobs_without_a_driver_here(tmp_path: Path) -> None:
    store = await sqlite.SqliteStore.open(tmp_path / "state.db")
    clock = clock_mod.FakeClock()
    enqueued: list[str] = []
    running = ["pending-here"]
    poll = job_poll.JobPoll(
        store, clock, every=0.5, running=lambda: running, enqueue=enqueued.append
    )
    try:
        jobs: list[tuple[str, job.JobPhase]] = [
            ("pending-new", "Pending"),
            ("pending-here", "Pending"),
            ("running-elsewhere", "Running"),
            ("paused", "Paused"),
            ("done", "Succeeded"),
        ]
        for name, phase in jobs:
            await store.create(make_job(name, phase))
        poll.start()
        await clock.advance(0.4)
        assert enqueued == []  # not before its first poll
        await clock.advance(0.1)
        # The store's read runs on a thread: wait for it, not for time.
        await wait.until(lambda: enqueued, within=10, what="the first poll enqueued")
        assert enqueued == ["pending-new"]
        await poll.stop()
        assert await poll.poll_once() == ["pending-new"]
        running.append("pending-new")  # its owner started it
        await store.create(make_job("later", "Pending"))
        assert await poll.poll_once() == ["later"]
    finally:
        await poll.stop()
        await store.close()
