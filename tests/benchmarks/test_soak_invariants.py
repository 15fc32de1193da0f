"""The soak's judge, on rounds written by hand: each invariant holds on a calm cluster and
fails, naming its evidence, on the one violation it exists to catch. And the schedule is a
function of its seed."""

from __future__ import annotations

import itertools

import pytest

from benchmarks import report, soak, soak_schedule
from benchmarks import soak_invariants as inv

DESIRED = {"net": {"a": 2, "b": 1}}
AGENTS = frozenset({"p1", "p2", "p3"})


def pnode(name: str, *, phase: str = "Ready", allocated: int = 200) -> inv.PNodeSeen:
    return inv.PNodeSeen(name, phase, 1, 1000, 2**30, allocated, 0)


def alloc(vnode: str, replica: int, pnode: str, epoch: int, phase: str = "Running"):
    return inv.AllocationSeen("net", vnode, replica, pnode, epoch, phase, 100, 0)


def endpoint(vnode: str, replica: int, pnode: str, epoch: int) -> inv.EndpointSeen:
    return inv.EndpointSeen("net", vnode, replica, pnode, epoch)


CALM_ALLOCS = [alloc("a", 0, "p1", 1), alloc("a", 1, "p2", 1), alloc("b", 0, "p1", 1)]
CALM_ENDPOINTS = [endpoint("a", 0, "p1", 1), endpoint("a", 1, "p2", 1), endpoint("b", 0, "p1", 1)]


def round_at(
    t: float,
    *,
    pnodes: list[inv.PNodeSeen] | None = None,
    allocations: list[inv.AllocationSeen] | None = None,
    endpoints: list[inv.EndpointSeen] | None = None,
    up: frozenset[str] = AGENTS,
) -> inv.Round:
    return inv.Round(
        t, t + 0.1, "replica-0",
        pnodes if pnodes is not None else [pnode(n) for n in sorted(AGENTS)],
        allocations if allocations is not None else CALM_ALLOCS,
        endpoints if endpoints is not None else CALM_ENDPOINTS,
        up,
    )  # fmt: skip


def checker() -> inv.Checker:
    return inv.Checker(desired=DESIRED, lease=4.0, grace=2.0)


def verdict(ck: inv.Checker, prefix: str) -> inv.Verdict:
    return next(v for v in ck.verdicts() if v.name.startswith(prefix))


def test_a_calm_cluster_holds_every_invariant() -> None:
    ck = checker()
    for t in range(20):
        ck.observe(round_at(float(t)))
    assert ck.converged(round_at(21.0))
    assert {v.name: v.holds for v in ck.verdicts()} == {
        "capacity never over-committed": True,
        "one PNode per (slot, epoch)": True,
        "epochs never go backwards": True,
        "no expired endpoint resolved": True,
        "no allocation Pending on a Ready PNode > 10 s": True,
        # Nothing died and nothing was healed: nothing to judge.
        "allocations on dead PNodes move within lease + grace + 10 s": None,
        "re-convergence after each fault": None,
        "running agents stay Ready": True,
        "no process exits unless killed": True,
    }


def test_over_commitment_is_caught_by_accounting_and_by_listing() -> None:
    ck = checker()
    ck.observe(round_at(0.0, pnodes=[pnode("p1", allocated=1001), pnode("p2"), pnode("p3")]))
    crowded = [*CALM_ALLOCS, *(alloc("c", i, "p3", 1) for i in range(11))]
    ck.observe(round_at(1.0, allocations=crowded))
    v = verdict(ck, "capacity")
    assert v.holds is False
    assert any("p1: accounted cpu 1001 > capacity 1000" in e for e in v.evidence)
    assert any("p3: cpu of listed allocations 1100 > capacity 1000" in e for e in v.evidence)


def test_one_slot_and_epoch_on_two_pnodes_is_caught() -> None:
    ck = checker()
    ck.observe(round_at(0.0))
    ck.observe(round_at(1.0, endpoints=[*CALM_ENDPOINTS[:2], endpoint("b", 0, "p3", 1)]))
    v = verdict(ck, "one PNode")
    assert v.holds is False
    assert v.evidence == ["net/b/0 epoch 1 on ['p1', 'p3']"]


def test_an_epoch_going_backwards_is_caught_but_not_within_overlapping_polls() -> None:
    ck = checker()
    ck.observe(round_at(0.0, allocations=[*CALM_ALLOCS[:2], alloc("b", 0, "p2", 2)],
                        endpoints=CALM_ENDPOINTS[:2]))  # fmt: skip
    assert verdict(ck, "epochs").holds is True
    # A poll that started before the one showing epoch 2 ended may still show epoch 1.
    ck.observe(inv.Round(0.05, 0.2, "replica-1", None, None, CALM_ENDPOINTS, AGENTS))
    assert verdict(ck, "epochs").holds is True
    ck.observe(round_at(1.0))
    v = verdict(ck, "epochs")
    assert v.holds is False
    assert v.evidence[0] == (
        "t=1.1 s net/b/0: epoch 1 from ListAllocations via replica-0 after epoch 2 from"
        " ListAllocations via replica-0 (poll ended t=0.1 s) (the same replica's view went back)"
    )


def on(replica: str, t: float, **parts: object) -> inv.Round:
    r = round_at(t, **parts)  # type: ignore[arg-type]
    return inv.Round(r.started, r.ended, replica, r.pnodes, r.allocations, r.endpoints, AGENTS)


def test_a_superseded_epoch_resolved_by_another_replica_fails() -> None:
    ck = checker()
    ck.observe(on("replica-0", 0.0, allocations=[*CALM_ALLOCS[:2], alloc("b", 0, "p2", 2)]))
    ck.observe(on("replica-1", 1.0, allocations=[*CALM_ALLOCS[:2], alloc("b", 0, "p2", 2)]))
    v = verdict(ck, "epochs")
    assert v.holds is False
    assert v.evidence[0].endswith("(a superseded epoch resolved)")
    assert "epoch 1 from resolution via replica-1 after epoch 2" in v.evidence[0]


def test_another_replicas_list_trailing_by_its_refresh_is_counted_not_failed() -> None:
    ck = checker()
    ck.observe(on("replica-0", 0.0, allocations=[*CALM_ALLOCS[:2], alloc("b", 0, "p2", 2)],
                  endpoints=CALM_ENDPOINTS[:2]))  # fmt: skip
    ck.observe(on("replica-1", 1.0, endpoints=CALM_ENDPOINTS[:2]))
    v = verdict(ck, "epochs")
    assert v.holds is True
    assert len(ck.list_lag) == 1
    assert v.evidence[-1].startswith("not counted: 1 ListAllocations answers")


@pytest.mark.parametrize(
    ("poll_at", "revived_at", "holds"),
    [
        (4.5, None, True),  # within lease + margin of the kill: may still be live
        (5.5, None, False),  # past it, agent still down: expired
        (5.5, 5.55, True),  # the agent came back during the poll: a new lease may exist
    ],
)
def test_resolving_a_pnode_down_past_its_lease(
    poll_at: float, revived_at: float | None, holds: bool
) -> None:
    ck = checker()
    ck.agent_down("p2", 0.0)
    if revived_at is not None:
        ck.agent_up("p2", revived_at)
    ck.observe(round_at(poll_at))
    v = verdict(ck, "no expired")
    assert v.holds is holds, v.evidence


def test_pending_on_a_ready_pnode_past_the_bound() -> None:
    ck = checker()
    waiting = [*CALM_ALLOCS[:2], alloc("b", 0, "p3", 2, phase="Pending")]
    for t in (0.0, 5.0, 10.0):
        ck.observe(round_at(t, allocations=waiting))
    assert verdict(ck, "no allocation Pending").holds is True
    # Pending on a PNode that is not Ready does not count.
    not_ready = [pnode("p1"), pnode("p2"), pnode("p3", phase="NotReady")]
    ck.observe(round_at(20.0, pnodes=not_ready, allocations=waiting))
    assert verdict(ck, "no allocation Pending").holds is True
    for t in (21.0, 26.0, 31.5):
        ck.observe(round_at(t, allocations=waiting))
    v = verdict(ck, "no allocation Pending")
    assert v.holds is False
    assert "net/b/0 epoch 2: Pending on a Ready PNode for >= 10.5 s" in v.evidence[0]


@pytest.mark.parametrize(("moved_at", "holds"), [(15.0, True), (17.5, False), (None, False)])
def test_slots_of_a_dead_agent_move_within_the_bound(moved_at: float | None, holds: bool) -> None:
    ck = checker()
    ck.observe(round_at(0.0))
    ck.agent_down("p1", 1.0)
    ck.expect_moves(7, "p1", 1.0)
    up = AGENTS - {"p1"}
    ck.observe(round_at(2.0, up=up))
    moved_allocs = [alloc("a", 0, "p3", 2), CALM_ALLOCS[1], alloc("b", 0, "p2", 2)]
    moved_endpoints = [endpoint("a", 0, "p3", 2), CALM_ENDPOINTS[1], endpoint("b", 0, "p2", 2)]
    if moved_at is not None:
        ck.observe(round_at(moved_at - 0.1, allocations=moved_allocs, endpoints=moved_endpoints,
                            up=up))  # fmt: skip
    assert ck.settled(7) is (moved_at is not None)
    v = verdict(ck, "allocations on dead")
    assert v.holds is holds, v.summary


def test_re_convergence_waits_for_every_running_agent_to_be_ready() -> None:
    ck = checker()
    ck.healed(3, "SIGSTOP the store", began=0.0, at=3.0)
    spurious = [pnode("p1"), pnode("p2"), pnode("p3", phase="NotReady")]
    ck.observe(round_at(3.5, pnodes=spurious))
    assert not ck.settled(3)
    ck.observe(round_at(5.0))
    assert ck.settled(3)
    [(fault, what, held, took)] = ck.convergence_times()
    assert (fault, what, held) == (3, "SIGSTOP the store", 3.0)
    assert took == pytest.approx(2.1)
    assert verdict(ck, "re-convergence").holds is True


def test_a_running_agents_pnode_not_ready_fails_once_per_episode() -> None:
    ck = checker()
    # p3's agent came back at t=10: its PNode may be NotReady until lease + grace + 1 s.
    ck.agent_down("p3", 5.0)
    ck.agent_up("p3", 10.0)
    ck.healed(4, "SIGSTOP the store", began=12.0, at=15.0)
    late = [pnode("p1"), pnode("p2"), pnode("p3", phase="NotReady")]
    for t in (12.0, 16.0):
        ck.observe(round_at(t, pnodes=late))
    assert verdict(ck, "running agents stay Ready").holds is True
    # p2's agent ran all along: NotReady for two polls in a row is one episode.
    stalled = [pnode("p1"), pnode("p2", phase="NotReady"), pnode("p3")]
    for t in (18.0, 18.5):
        ck.observe(round_at(t, pnodes=stalled))
    v = verdict(ck, "running agents stay Ready")
    assert v.holds is False
    assert v.evidence == [
        "t=18.0 s-18.6 s p2 NotReady, its agent running (last fault: 4, SIGSTOP the store,"
        " began t=12.0 s)"
    ]


def test_an_unexpected_exit_fails_with_its_last_log_line() -> None:
    ck = checker()
    ck.process_exited("agent-2", 12.0, 1, "starting\nasyncio.CancelledError\n")
    v = verdict(ck, "no process exits")
    assert v.holds is False
    assert v.evidence == ["t=12.0 s agent-2 exited with 1; last log line: asyncio.CancelledError"]


def test_the_schedule_is_a_function_of_its_seed() -> None:
    def first(seed: int) -> list[soak_schedule.Fault]:
        schedule = soak_schedule.faults(seed, agents=["a0", "a1"], replicas=["r0", "r1"])
        return list(itertools.islice(schedule, 50))

    assert first(5) == first(5)
    assert first(5) != first(6)
    assert {f.kind for f in first(5)} == set(soak_schedule.WEIGHTS)
    # One replica: never broken, nobody would be left to fail over to.
    alone = itertools.islice(soak_schedule.faults(5, agents=["a0"], replicas=["r0"]), 50)
    assert not any(f.kind.endswith("-replica") for f in alone)


@pytest.mark.parametrize(("text", "seconds"), [("15m", 900.0), ("90s", 90.0), ("2", 2.0),
                                               ("1.5h", 5400.0)])  # fmt: skip
def test_durations(text: str, seconds: float) -> None:
    assert soak.parse_duration(text) == seconds


def test_a_bad_duration_names_the_flag_and_value() -> None:
    with pytest.raises(ValueError, match=r"--duration '15 minutes'"):
        soak.parse_duration("15 minutes")


def test_the_benchmarks_readme_lists_each_soak_report_with_what_failed(tmp_path) -> None:
    (tmp_path / "soak-seed1-15m.md").write_text(
        "# Chaos soak\n\n| invariant | verdict | evidence |\n|---|---|---|\n"
        "| capacity never over-committed | holds | 10 checks |\n"
        "| no process exits unless killed | **FAILS** | 3 exited |\n"
        "| re-convergence after each fault | not evaluated | 0 faults |\n"
    )
    assert report.soak_section(tmp_path)[-1] == (
        "- [soak-seed1-15m.md](results/soak-seed1-15m.md): 1 of 3 invariants hold;"
        " **fails**: no process exits unless killed"
    )
    assert report.soak_section(tmp_path / "none") == []
