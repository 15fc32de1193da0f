"""The contract every reconcile loop implements, and nothing else: no I/O, no policy.

The manager (`controller.runtime.manager`) reads a loop's answer as follows:

    returns Result()                         done; backoff for the key is forgotten
    returns Result(requeue_after=s)          look again in s seconds (a timer, not a retry)
    returns Result(requeue=True)             look again soon, with the key's backoff: for
                                             "not ready yet" without calling it an error
    raises TerminalError                     logged and counted; never retried
    raises any other Exception               logged and counted; retried with backoff

`requeue_after` wins over `requeue` when both are set, as in controller-runtime.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class Result:
    requeue_after: float | None = None
    requeue: bool = False

    def __post_init__(self) -> None:
        after = self.requeue_after
        if after is not None and not (math.isfinite(after) and after >= 0):
            raise ValueError(
                f"Result.requeue_after={after!r}: must be a finite number of seconds >= 0, "
                "or None for no timer"
            )


class TerminalError(Exception):
    """Retrying cannot help (the spec is invalid, the record names something impossible).

    The manager logs and counts it and forgets the key; a later change to the record brings
    the key back through an event or a resync.
    """


class Reconciler(Protocol):
    @property
    def name(self) -> str:
        """Names the loop in logs, metrics and `Manager.enqueue`."""
        ...

    async def reconcile(self, key: str) -> Result: ...


@dataclass(frozen=True, slots=True)
class Occurrence:
    """Something a loop did that people read as an event (`dcnctl get events`): the record
    it concerns (kind as `Resource.KIND`, and name), Normal or Warning, a CamelCase reason
    and a one-line message. Loops hand these to an `on_event` callback the controller wires
    to its recorder (loops import no controller); the call must not block or raise."""

    kind: str
    name: str
    type: str
    reason: str
    message: str
