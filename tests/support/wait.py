"""Waiting for something a real process, socket or thread will do: one helper for all tests.

Tests of timed logic never wait: they drive a FakeClock (`advance`, `settle`). What is left
is work a test cannot drive — a subprocess starting, a gRPC server noticing a cancel, a store
write on a thread. For that, `until` polls a condition with a deadline and fails naming what
it waited for and what it last saw, so a slow machine costs time and a broken one gives a
message, never a hang. This module is the only place in the tests where a poll sleeps in
real time.

`until_sync` is the same wait for callers without an event loop (sync tests, and session
fixtures that start subprocesses). It shares `_Patience` (the deadline and the message) and
differs only in how it sleeps: running the async one on a private loop instead would reset
the thread's current event loop under pytest-asyncio's runner.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, overload

T = TypeVar("T")

#: Between two looks at the condition. Short, because what we wait for is usually already on
#: its way; callers whose look is expensive (a subprocess, an RPC) pass a longer `every`.
POLL = 0.01


class _Patience:
    """The policy both waits share: a deadline on the real clock, and the failure message."""

    def __init__(self, *, within: float, what: str) -> None:
        self.within = within
        self.what = what
        self.deadline = time.monotonic() + within

    def check(self, seen: object) -> None:
        if time.monotonic() >= self.deadline:
            raise AssertionError(f"{self.what}: not within {self.within}s; last seen: {seen!r}")


@overload
async def until(
    condition: Callable[[], Awaitable[T]],
    *,
    within: float,
    what: str,
    accept: Callable[[T], object] = ...,
    every: float = ...,
) -> T: ...


@overload
async def until(
    condition: Callable[[], T],
    *,
    within: float,
    what: str,
    accept: Callable[[T], object] = ...,
    every: float = ...,
) -> T: ...


async def until(
    condition: Callable[[], Any],
    *,
    within: float,
    what: str,
    accept: Callable[[Any], object] = bool,
    every: float = POLL,
) -> Any:
    """The first value of `condition()` (sync or async) that `accept` holds for (truthy by
    default), looked at every `every` seconds; AssertionError naming `what` and the last
    value seen once `within` seconds have passed without one."""
    patience = _Patience(within=within, what=what)
    while True:
        seen = condition()
        if inspect.isawaitable(seen):
            seen = await seen
        if accept(seen):
            return seen
        patience.check(seen)
        await asyncio.sleep(every)  # polling a condition with a deadline


def until_sync(
    condition: Callable[[], T],
    *,
    within: float,
    what: str,
    accept: Callable[[T], object] = bool,
    every: float = POLL,
) -> T:
    """`until` for a caller without a running event loop (a sync test or fixture)."""
    patience = _Patience(within=within, what=what)
    while True:
        seen = condition()
        if accept(seen):
            return seen
        patience.check(seen)
        time.sleep(every)  # polling a condition with a deadline
