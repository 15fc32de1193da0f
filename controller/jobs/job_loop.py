"""The job loop: keeps exactly the driver tasks this replica should run, level-triggered.

    Pending / Running / Paused, no live task here   → start a driver task (controller.jobs.driver)
    Succeeded / Failed / Cancelled, or deleted      → no task (cancel one still running)

and look again in `job_recheck` seconds, so a driver that died (crashed, fenced, its
orchestrator restarted) is replaced within that. It lives in `controller`, not
`reconcilers`, because a driver is a long-lived task with network I/O, not a state write.

Correctness does not depend on only one replica running a job's driver: a driver's every
write is conditional on the attempt it claimed, so of two drivers the older stops at its
next write. Ownership (the manager's rendezvous `owns`) only keeps that from happening.
"""

from __future__ import annotations

import asyncio
import logging

from api.resources import job as job_model
from controller.jobs import driver
from reconcilers import base
from store import errors

log = logging.getLogger("dcnr.jobs.loop")

Job = job_model.Job


class JobLoop:
    def __init__(self, context: driver.DriverContext) -> None:
        self._ctx = context
        self._tasks: dict[str, asyncio.Task[None]] = {}

    @property
    def name(self) -> str:
        return "job"

    def running(self) -> list[str]:
        """Jobs with a live driver task on this replica."""
        return sorted(name for name, task in self._tasks.items() if not task.done())

    async def reconcile(self, key: str) -> base.Result:
        try:
            job = await self._ctx.store.get(Job, key)
        except errors.NotFound:
            await self._cancel(key)
            return base.Result()
        if job.status.phase in driver.FINAL_PHASES or job.spec.type != "train":
            await self._cancel(key)
            return base.Result()
        task = self._tasks.get(key)
        if task is None or task.done():
            self._start(key)
        return base.Result(requeue_after=self._ctx.config.job_recheck)

    def _start(self, key: str) -> None:
        run = driver.TrainingRun(self._ctx, key)
        task = asyncio.get_running_loop().create_task(self._guarded(run), name=f"driver-{key}")
        self._tasks[key] = task

    async def _guarded(self, run: driver.TrainingRun) -> None:
        try:
            await run.run()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception(
                "driver failed; the job loop restarts it", extra={"fields": {"job": run.name}}
            )

    async def _cancel(self, key: str) -> None:
        task = self._tasks.pop(key, None)
        if task is not None and not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def list_keys(self) -> list[str]:
        """Every job not in a final phase (for the manager's resync)."""
        page_token: str | None = None
        names: list[str] = []
        while True:
            page = await self._ctx.store.list(Job, continue_token=page_token)
            names += [j.name for j in page.items if j.status.phase not in driver.FINAL_PHASES]
            page_token = page.continue_token
            if page_token is None:
                return names

    async def stop(self) -> None:
        """Cancel every driver task (on shutdown); another replica's loop takes the jobs."""
        for key in list(self._tasks):
            await self._cancel(key)
