"""The repair pass (`controller.state.assignment_repair`) against a real SQLite store, on a
fake clock: a PNode holding an allocation stranded past the bound is written again with a
bumped version and a recomputed digest, so its agent is sent the whole set again."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from api.resources import allocation, pnode
from controller import config as config_mod
from controller.runtime import clock as clocks
from controller.runtime import recorder
from controller.state import assignment_repair
from controller.state import view as view_mod
from reconcilers import network_apply
from store import base, sqlite
from tests.controller.state.test_view import (
    allocation_record,
    create_all,
    lease_record,
    network_record,
    pnode_record,
)

#: A lease that outlives the waits below, so the PNode stays live without heartbeats.
CONFIG = config_mod.ControlPlaneConfig(lease_duration=120.0, pending_repair_after=10.0)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[base.Store]:
    opened = await sqlite.SqliteStore.open(tmp_path / "state.db")
    yield opened
    await opened.close()


async def _placed(store: base.Store, clock: clocks.FakeClock, *, digest: bool = True) -> None:
    """p1 (live) holding net.input.0, written as the network loop writes a placement."""
    node = pnode_record("p1")
    node.status.assignments_version = 1
    node.status.assignments_digest = allocation.EMPTY_DIGEST if digest else None
    await create_all(store, network_record(), lease_record("p1", renewed=clock.now()))
    node = await store.create(node)
    alloc = allocation_record("mnist", "input", 0, "p1")
    await store.transact(
        [base.Create(alloc), base.Update(network_apply.charged(node, gained=[alloc]))]
    )


def _repair(
    store: base.Store, clock: clocks.FakeClock, told: list[tuple[str, str]]
) -> tuple[view_mod.View, assignment_repair.AssignmentRepair]:
    view = view_mod.View(store, clock, config=CONFIG)
    events = recorder.Recorder(
        store=store, clock=clock, replica="r", on_recorded=lambda t, r: told.append((t, r))
    )
    repair = assignment_repair.AssignmentRepair(
        store, view, clock, bound=CONFIG.pending_repair_after, events=events
    )
    return view, repair


async def test_a_stranded_allocation_gets_its_set_sent_again_once_per_bound(store) -> None:
    clock = clocks.FakeClock()
    told: list[tuple[str, str]] = []
    await _placed(store, clock)
    view, repair = _repair(store, clock, told)
    await view.refresh()
    shown = view.assignment_set("p1")
    assert shown is not None
    assert [a.allocation.name for a in shown.assignments] == ["mnist.input.0"]
    agent_knows = shown.version  # ... and, say, never applied it

    assert await repair.run_once() == []
    await clock.advance(9.0)
    assert await repair.run_once() == []
    assert repair.oldest_pending() == 9.0
    await clock.advance(1.0)
    (done,) = await repair.run_once()
    assert (done.pnode, done.slot, done.pending_for) == ("p1", "mnist.input.0", 10.0)
    assert told == [("Warning", "AssignmentsRepublished")]

    stored = await store.get(pnode.PNode, "p1")
    held = await base.list_all(store, allocation.Allocation)
    assert stored.status.assignments_version == 3  # registered 1, placed 2, republished 3
    assert stored.status.assignments_digest == allocation.digest_of(held)
    again = view.assignment_set("p1")  # written through: no refresh needed
    assert again is not None
    assert again.settled
    assert again.version > agent_knows
    assert [a.allocation.name for a in again.assignments] == ["mnist.input.0"]

    await clock.advance(5.0)
    assert await repair.run_once() == []  # not again within the bound
    await clock.advance(5.0)
    assert [r.pnode for r in await repair.run_once()] == ["p1"]


async def test_a_running_allocation_is_left_alone(store) -> None:
    clock = clocks.FakeClock()
    told: list[tuple[str, str]] = []
    await _placed(store, clock)
    running = await store.get(allocation.Allocation, "mnist.input.0")
    running.status.phase = "Running"
    await store.update(running)
    view, repair = _repair(store, clock, told)
    await view.refresh()
    await clock.advance(60.0)
    assert await repair.run_once() == []
    assert repair.oldest_pending() == 0.0
    assert told == []


async def test_a_pnode_written_before_the_digest_gets_one(store) -> None:
    clock = clocks.FakeClock()
    await _placed(store, clock, digest=False)
    view, repair = _repair(store, clock, [])
    await view.refresh()
    await repair.run_once()
    await clock.advance(10.0)
    assert len(await repair.run_once()) == 1
    stored = await store.get(pnode.PNode, "p1")
    held = await base.list_all(store, allocation.Allocation)
    assert stored.status.assignments_digest == allocation.digest_of(held) != allocation.EMPTY_DIGEST
