"""Optimistic concurrency's one retry policy: re-read, modify, write; again on Conflict.

client-go's `RetryOnConflict`, for the read-modify-write writes outside the reconcile
loops (gRPC handlers, the trust book, tiebreakers, the job driver). Reconcilers do not use
it: a loop that meets a Conflict raises and the manager requeues the key.

The attempt callable does the whole read-modify-write, re-reading every time, so a retry
never writes from a stale copy. Only `Conflict` (and, per call, errors that mean the same
thing for that write, such as AlreadyExists for a create raced by another creator) is
retried; any other error propagates at once.

The cap: `ATTEMPTS` (8). Each Conflict means another writer's write succeeded meanwhile, so
the system as a whole always progresses, and this many writers racing on one record all get
through. No backoff between attempts, on purpose: a Conflict is not overload (the store
backends already retry throttling, `Unavailable`, with their own jittered backoff), waiting
would only lengthen the window in which the next writer can slip in, and these writes sit
on request paths whose latency users see. When the cap is reached, `Exhausted` is raised: a
`Conflict` (so the gRPC boundary answers ABORTED and callers that handled the last Conflict
still do), whose message says what kept changing and that the caller may retry.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

from store import errors

T = TypeVar("T")

#: Attempts before giving up; each failed one means another writer succeeded meanwhile.
ATTEMPTS = 8


class Exhausted(errors.Conflict):
    """Every attempt met a Conflict: the record kept changing under the writer."""

    def __init__(self, what: str, attempts: int, last: errors.StoreError) -> None:
        super().__init__(
            f"{what}: the record kept changing under {attempts} attempts (each a write by "
            "another writer); retry",
            kind=last.kind,
            name=last.name,
            op_index=last.op_index,
        )
        self.what = what
        self.attempts = attempts


async def retry_on_conflict(
    attempt: Callable[[], Awaitable[T]],
    *,
    what: str,
    attempts: int = ATTEMPTS,
    also: tuple[type[errors.StoreError], ...] = (),
) -> T:
    """`await attempt()` until it returns, at most `attempts` times, again whenever it
    raises Conflict (or one of `also`); raises `Exhausted` (from the last error) when
    every attempt conflicted. `what` names the write for that message, e.g.
    "apply network 'mnist'"."""
    if attempts < 1:
        raise ValueError(f"retry_on_conflict: attempts must be at least 1, got {attempts}")
    retried: tuple[type[errors.StoreError], ...] = (errors.Conflict, *also)
    for _ in range(attempts - 1):
        try:
            return await attempt()
        except retried:
            continue
    try:
        return await attempt()
    except retried as last:
        raise Exhausted(what, attempts, last) from last
