"""One background task of a long-lived component: started once, stopped by cancelling it.

The view's refresh, the lease keeper, the job poll, the assignment repair, the event
recorder and the trust book each run one loop beside the server; this is their common
start/stop, so each says only what its loop does.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any


class Background:
    def __init__(self, name: str) -> None:
        self._name = name
        self._task: asyncio.Task[None] | None = None

    @property
    def running(self) -> bool:
        return self._task is not None

    def start(self, loop: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """Run `loop()` as a task, unless one is running already."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(loop(), name=self._name)

    async def stop(self) -> None:
        """Cancel the task and wait until it has ended (whatever it ended with)."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
