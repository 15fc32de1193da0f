"""Job records this replica wrote, for watchers: progress reaches WatchJob without a store read.

Jobs are not in the view (they change several times a second while training, and only
their watchers care), so every Job write on this replica — the driver's progress, Train,
CancelJob — is published here. A watcher wakes on the job's signal and sends the newest
version; writes by other replicas reach it through a periodic re-read of the store.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from functools import partial

from api.resources import job as job_model
from controller.runtime import clock as clock_mod
from controller.state import view as view_mod

FINAL_PHASES = frozenset({"Succeeded", "Failed", "Cancelled"})


class JobFeed:
    def __init__(self, clock: clock_mod.Clock) -> None:
        self._latest: dict[str, job_model.Job] = {}
        self._signals: defaultdict[str, view_mod.Signal] = defaultdict(
            partial(view_mod.Signal, clock)
        )
        self._subscribers: list[Callable[[job_model.Job], None]] = []

    def subscribe(self, callback: Callable[[job_model.Job], None]) -> None:
        """Call `callback(job)` with every newer version published (the dashboard's
        curves: each of the driver's progress writes is a point)."""
        self._subscribers.append(callback)

    def published(self, job: job_model.Job) -> None:
        old = self._latest.get(job.name)
        if (
            old is not None
            and old.metadata.uid == job.metadata.uid
            and old.metadata.resource_version >= job.metadata.resource_version
        ):
            return
        self._latest[job.name] = job
        self._signals[job.name].bump()
        for callback in self._subscribers:
            callback(job)

    def latest(self, name: str) -> job_model.Job | None:
        return self._latest.get(name)

    def signal(self, name: str) -> view_mod.Signal:
        return self._signals[name]
