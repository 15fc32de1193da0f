"""An executor that runs each call at once, on the calling thread.

The SQLite store keeps blocking calls off the event loop by running them on its own worker
thread. The simulator wants the opposite: one thread, every store call done before the next
simulated event, so the order of everything is a function of the seed alone.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent import futures
from typing import Any, TypeVar

T = TypeVar("T")


class InlineExecutor(futures.Executor):
    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> futures.Future[T]:
        done: futures.Future[T] = futures.Future()
        try:
            done.set_result(fn(*args, **kwargs))
        except BaseException as exc:  # handed to the awaiting coroutine, as a pool would
            done.set_exception(exc)
        return done
