"""The stranded-allocation decision (`controller.state.stranded`): pure, times passed in."""

from __future__ import annotations

import pytest

from api.resources import allocation, pnode
from controller.state import stranded
from tests.controller.state.test_view import allocation_record, pnode_record

S = stranded.Stranded


def _pending(
    slot_vnode: str, on: str, *, phase: allocation.AllocationPhase = "Pending", incarnation: int = 1
) -> allocation.Allocation:
    alloc = allocation_record("net", slot_vnode, 0, on, incarnation=incarnation)
    alloc.status.phase = phase
    return alloc


@pytest.mark.parametrize(
    ("alloc_phase", "node_phase", "live", "incarnation", "counted"),
    [
        ("Pending", "Ready", True, 1, True),
        ("Running", "Ready", True, 1, False),  # the agent runs it
        ("Failed", "Ready", True, 1, False),  # the agent said why; re-sending cannot help
        ("Pending", "NotReady", True, 1, False),  # the PNode is the problem, not the set
        ("Pending", "Ready", False, 1, False),  # lease lapsed: about to be NotReady
        ("Pending", "Ready", True, 0, False),  # for a dropped incarnation: being re-issued
    ],
)
def test_only_pending_allocations_of_live_ready_pnodes_are_stranded(
    alloc_phase: allocation.AllocationPhase,
    node_phase: pnode.PNodePhase,
    live: bool,
    incarnation: int,
    counted: bool,
) -> None:
    nodes = {"p1": pnode_record("p1", phase=node_phase)}
    found = stranded.stranded(
        nodes,
        [_pending("a", "p1", phase=alloc_phase, incarnation=incarnation)],
        {"p1"} if live else set(),
    )
    assert found == ([S("net.a.0", "p1", 1)] if counted else [])


def test_an_allocation_on_an_unknown_pnode_is_not_stranded() -> None:
    assert stranded.stranded({}, [_pending("a", "gone")], {"gone"}) == []


def test_a_wait_starts_when_first_seen_and_ends_when_no_longer_stranded() -> None:
    first = stranded.observed({}, [S("s", "p1", 1)], 100.0)
    assert first == {S("s", "p1", 1): 100.0}
    later = stranded.observed(first, [S("s", "p1", 1), S("t", "p1", 1)], 105.0)
    assert later == {S("s", "p1", 1): 100.0, S("t", "p1", 1): 105.0}
    moved = stranded.observed(later, [S("s", "p2", 2)], 107.0)  # new epoch, new PNode
    assert moved == {S("s", "p2", 2): 107.0}
    assert stranded.observed(moved, [], 108.0) == {}


def test_oldest_is_the_longest_wait_and_zero_without_any() -> None:
    since = {S("s", "p1", 1): 100.0, S("t", "p2", 1): 104.0}
    assert stranded.oldest(since, 110.0) == 10.0
    assert stranded.oldest({}, 110.0) == 0.0


def test_a_pnode_is_repaired_once_its_allocation_waited_the_bound() -> None:
    since = {S("s", "p1", 1): 100.0}
    assert stranded.decide(since, 109.9, bound=10.0, repaired={}) == []
    assert stranded.decide(since, 110.0, bound=10.0, repaired={}) == [
        stranded.Repair("p1", "s", 10.0)
    ]


def test_a_repair_names_the_longest_waiting_allocation_once_per_pnode() -> None:
    since = {S("s", "p1", 1): 103.0, S("t", "p1", 1): 100.0, S("u", "p2", 4): 95.0}
    assert stranded.decide(since, 115.0, bound=10.0, repaired={}) == [
        stranded.Repair("p1", "t", 15.0),
        stranded.Repair("p2", "u", 20.0),
    ]


def test_a_pnode_repaired_within_the_bound_waits_for_its_next_turn() -> None:
    since = {S("s", "p1", 1): 100.0}
    assert stranded.decide(since, 115.0, bound=10.0, repaired={"p1": 110.0}) == []
    assert stranded.decide(since, 120.0, bound=10.0, repaired={"p1": 110.0}) == [
        stranded.Repair("p1", "s", 20.0)
    ]
