"""Allocation status from what agents report: Pending until the agent says its VNode runs.

Agents send the state of each assignment with every heartbeat. Only a change is written,
off the heartbeat's path (a background task, one write in flight per allocation), and
only for the allocation as the agent knows it: same PNode, same epoch. A write that loses
a race with the network loop is dropped; the next heartbeat reports again.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Iterable

from api.dcnr.v1 import pnode_pb2
from api.resources import allocation
from controller.state import view as view_mod
from store import base, errors

log = logging.getLogger("dcnr.allocation_status")

_PHASES: dict[int, allocation.AllocationPhase] = {
    pnode_pb2.ASSIGNMENT_STATE_STARTING: "Pending",
    pnode_pb2.ASSIGNMENT_STATE_RUNNING: "Running",
    pnode_pb2.ASSIGNMENT_STATE_FAILED: "Failed",
    pnode_pb2.ASSIGNMENT_STATE_STOPPED: "Stopping",
}


class AllocationStatus:
    def __init__(self, store: base.Store, view: view_mod.View) -> None:
        self._store = store
        self._view = view
        self._inflight: dict[str, asyncio.Task[None]] = {}

    def observe(self, pnode: str, statuses: Iterable[pnode_pb2.AssignmentStatus]) -> None:
        """Called on the heartbeat path: compare in memory, write changes in the background."""
        for status in statuses:
            phase = _PHASES.get(status.state)
            name = allocation.slot_name(status.network, status.vnode, status.replica)
            current = self._view.allocations.get(name)
            if (
                phase is None
                or current is None
                or current.spec.pnode != pnode
                or current.spec.epoch != status.epoch
                or (current.status.phase == phase and current.status.message == status.message)
                or name in self._inflight
            ):
                continue
            task = asyncio.get_running_loop().create_task(
                self._write(current, phase, status.message[:1024])
            )
            self._inflight[name] = task
            task.add_done_callback(functools.partial(self._done, name))

    @property
    def pending(self) -> int:
        """Writes scheduled and not finished."""
        return len(self._inflight)

    def _done(self, name: str, _task: asyncio.Task[None]) -> None:
        self._inflight.pop(name, None)

    async def _write(
        self, current: allocation.Allocation, phase: allocation.AllocationPhase, message: str
    ) -> None:
        record = current.model_copy(deep=True)
        record.status.phase = phase
        record.status.message = message
        record.status.reason = "" if phase == "Running" else record.status.reason
        try:
            self._view.apply_written([await self._store.update(record)])
        except (errors.Conflict, errors.NotFound):
            pass  # moved or changed meanwhile; the next heartbeat tells again
        except errors.StoreError:
            log.warning("allocation %s: status not written", current.name, exc_info=True)

    async def drain(self) -> None:
        """Wait for the writes scheduled so far."""
        await asyncio.gather(*list(self._inflight.values()), return_exceptions=True)

    async def stop(self) -> None:
        tasks = list(self._inflight.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
