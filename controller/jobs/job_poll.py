"""Prompt hand-off of new jobs between replicas: list the jobs, enqueue the unclaimed ones.

`Train` enqueues the job loop of the replica that took the call; when another replica owns
the job (the manager's rendezvous `owns`), that enqueue is dropped and, without this, the
owner found the job only at its next resync (`resync_every`, 30 s by default: jobs sat
Pending 19-24 s in chaos runs with three replicas). Jobs are not in the view (they change
several times a second while training), so every `job_poll` seconds each replica lists
them and enqueues every Pending job it has no driver for; the manager drops the keys this
replica does not own, so exactly the owner starts it, within about `job_poll` seconds.

Only Pending jobs: a job a driver has claimed is Running or Paused, and its driver's own
`job_recheck` and the resync look after it; enqueueing those too would let two replicas
that briefly disagree about membership take it from each other every poll.

One list per poll, of the Job records only (one page per 500 jobs). (The view follows
the store's change feed instead of listing; moving this poll onto the feed too is open.)
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from api.resources import job as job_model
from controller.runtime import background
from controller.runtime import clock as clock_mod
from store import base

log = logging.getLogger("dcnr.jobs.poll")


async def unclaimed(store: base.Store) -> list[str]:
    """Names of the jobs no driver has claimed yet (phase Pending)."""
    jobs = await base.list_all(store, job_model.Job)
    return sorted(j.name for j in jobs if j.status.phase == "Pending")


class JobPoll:
    def __init__(
        self,
        store: base.Store,
        clock: clock_mod.Clock,
        *,
        every: float,
        running: Callable[[], list[str]],
        enqueue: Callable[[str], None],
    ) -> None:
        """`running()`: jobs with a driver on this replica; `enqueue(name)`: the job loop's
        enqueue, which keeps only the keys this replica owns."""
        self._store = store
        self._clock = clock
        self._every = every
        self._running = running
        self._enqueue = enqueue
        self._background = background.Background("job-poll")

    async def poll_once(self) -> list[str]:
        """Enqueue every unclaimed job without a driver here; returns their names."""
        here = set(self._running())
        found = [name for name in await unclaimed(self._store) if name not in here]
        for name in found:
            self._enqueue(name)
        return found

    async def run(self) -> None:
        while True:
            await self._clock.sleep(self._every)
            try:
                await self.poll_once()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.warning("listing jobs failed; trying again next poll", exc_info=True)

    def start(self) -> None:
        self._background.start(self.run)

    async def stop(self) -> None:
        await self._background.stop()
