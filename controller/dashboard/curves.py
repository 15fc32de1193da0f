"""The points of each job's loss and accuracy curve, gathered as its status moves.

A Job record holds only its latest loss, accuracy and step (the store is not a time
series), so the curve is kept here, in memory: every version of a job this replica sees
(its own driver's writes through the job feed, other replicas' through the dashboard's
re-reads) adds a point when step, loss, accuracy or attempt moved. A new attempt, and a
step lower than the last one (a rollback to a checkpoint), are marked on the time axis by
the page. History starts when this replica first saw the job: after a restart the curve
begins at the step the job had reached.

Bounded: past `max_points` a job's older half is thinned to every other point, so a long
run keeps its shape at a coarser grain; at most `max_jobs` jobs are kept, the least
recently changed forgotten first.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

from api.resources import job as job_model

MAX_POINTS = 4000
MAX_JOBS = 200


class Curves:
    def __init__(self, *, max_points: int = MAX_POINTS, max_jobs: int = MAX_JOBS) -> None:
        if max_points < 4:
            raise ValueError(f"max_points: {max_points} must be >= 4")
        self._max_points = max_points
        self._max_jobs = max_jobs
        #: job name → (uid, points); most recently changed last.
        self._jobs: OrderedDict[str, tuple[str, list[dict[str, Any]]]] = OrderedDict()

    def observe(self, job: job_model.Job, at: float) -> bool:
        """Add `job`'s current progress at unix time `at` if it moved; True if it did."""
        status = job.status
        point = {
            "t": round(at, 3),
            "step": status.step,
            "loss": status.loss,
            "accuracy": status.accuracy,
            "attempt": status.attempt,
            "phase": status.phase,
        }
        uid = job.metadata.uid
        held = self._jobs.get(job.name)
        if held is None or held[0] != uid:  # new, or deleted and created again
            held = (uid, [])
            self._jobs[job.name] = held
        points = held[1]
        if points and all(points[-1][k] == point[k] for k in point if k != "t"):
            return False
        points.append(point)
        if len(points) > self._max_points:
            half = len(points) // 2
            points[:half] = points[:half:2]
        self._jobs.move_to_end(job.name)
        while len(self._jobs) > self._max_jobs:
            self._jobs.popitem(last=False)
        return True

    def points(self, name: str) -> list[dict[str, Any]]:
        held = self._jobs.get(name)
        return list(held[1]) if held is not None else []
