"""Allocation status follows what agents report, for the allocation as they know it."""

from __future__ import annotations

from pathlib import Path

import pytest

from api.dcnr.v1 import pnode_pb2
from api.resources import allocation
from controller import config as config_mod
from controller.runtime import clock as clocks
from controller.state import allocation_status
from controller.state import view as view_mod
from store import sqlite
from tests.controller.state import test_view as records
from tests.support import wait


@pytest.fixture
async def setup(tmp_path: Path):
    store = await sqlite.SqliteStore.open(tmp_path / "state.db")
    view = view_mod.View(store, clocks.FakeClock(), config=config_mod.ControlPlaneConfig())
    await records.create_all(
        store,
        records.network_record("net", ("a",)),
        records.allocation_record("net", "a", 0, "p1", epoch=2),
    )
    await view.refresh()
    writer = allocation_status.AllocationStatus(store, view)
    yield store, view, writer
    await writer.stop()
    await store.close()


def _report(
    epoch: int, state: pnode_pb2.AssignmentState.ValueType, message: str = ""
) -> pnode_pb2.AssignmentStatus:
    return pnode_pb2.AssignmentStatus(
        network="net", vnode="a", replica=0, epoch=epoch, state=state, message=message
    )


async def _phase(store: sqlite.SqliteStore, *, becomes: str) -> allocation.Allocation:
    """The allocation once the writer's store write (on the store's thread) shows `becomes`."""
    return await wait.until(
        lambda: store.get(allocation.Allocation, "net.a.0"),
        within=2,
        what=f"allocation net.a.0 to become {becomes}",
        accept=lambda current: current.status.phase == becomes,
    )


async def test_running_and_failed_reports_are_written(setup) -> None:
    store, view, writer = setup
    writer.observe("p1", [_report(2, pnode_pb2.ASSIGNMENT_STATE_RUNNING)])
    await _phase(store, becomes="Running")
    assert view.allocations["net.a.0"].status.phase == "Running"  # written through
    # The write counts as in flight until its task's done-callback runs, a moment after the
    # store shows it; a report meanwhile is skipped by design (the next heartbeat repeats
    # it), so the test waits for the writer itself, not only for the store.
    await writer.drain()
    writer.observe("p1", [_report(2, pnode_pb2.ASSIGNMENT_STATE_FAILED, "kind 'dense': bad")])
    failed = await _phase(store, becomes="Failed")
    assert failed.status.message == "kind 'dense': bad"


async def test_reports_about_another_epoch_or_pnode_are_ignored(setup) -> None:
    store, _, writer = setup
    before = await store.get(allocation.Allocation, "net.a.0")
    writer.observe("p1", [_report(1, pnode_pb2.ASSIGNMENT_STATE_RUNNING)])  # stale epoch
    writer.observe("p2", [_report(2, pnode_pb2.ASSIGNMENT_STATE_RUNNING)])  # not its host
    writer.observe("p1", [_report(2, pnode_pb2.ASSIGNMENT_STATE_UNSPECIFIED)])
    assert writer.pending == 0
    after = await store.get(allocation.Allocation, "net.a.0")
    assert after.metadata.resource_version == before.metadata.resource_version


async def test_an_unchanged_report_writes_nothing(setup) -> None:
    store, _, writer = setup
    writer.observe("p1", [_report(2, pnode_pb2.ASSIGNMENT_STATE_RUNNING)])
    running = await _phase(store, becomes="Running")
    await writer.drain()  # the write-through lands when the task finishes
    writer.observe("p1", [_report(2, pnode_pb2.ASSIGNMENT_STATE_RUNNING)])
    assert writer.pending == 0
    again = await store.get(allocation.Allocation, "net.a.0")
    assert again.metadata.resource_version == running.metadata.resource_version
