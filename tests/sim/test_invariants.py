"""Each invariant check catches a deliberately broken state, and passes a sound one: a check
that cannot fail would let the simulator report "all held" about anything."""

from __future__ import annotations

from api.resources import allocation, network, pnode
from sim import invariants
from tests.controller.state.test_view import allocation_record, pnode_record


def placed(
    vnode: str, replica: int, on: str, *, epoch: int = 1, cpu: int = 1000
) -> allocation.Allocation:
    alloc = allocation_record("net", vnode, replica, on, epoch=epoch)
    alloc.spec.resources = network.ResourceRequest(cpu=f"{cpu}m", memory=2**30)
    return alloc


def nodes(*names: str, cpu: int = 2000) -> dict[str, pnode.PNode]:
    return {n: pnode_record(n, cpu=cpu) for n in names}


def test_capacity_catches_allocations_over_a_pnodes_capacity() -> None:
    fleet = nodes("a", "b")
    sound = [placed("v0", 0, "a"), placed("v1", 0, "a"), placed("v2", 0, "b")]
    assert invariants.capacity(fleet, sound) == []
    over = [*sound, placed("v3", 0, "a")]
    [found] = invariants.capacity(fleet, over)
    assert "pnode a" in found
    assert "cpu 3000m" in found


def test_capacity_catches_accounting_over_capacity() -> None:
    fleet = nodes("a")
    fleet["a"].status.allocated = pnode.Capacity(cpu="2500m", memory=0)
    [found] = invariants.capacity(fleet, [])
    assert "status.allocated" in found


def test_replicas_apart_catches_two_replicas_on_one_pnode() -> None:
    assert invariants.replicas_apart([placed("v0", 0, "a"), placed("v0", 1, "b")]) == []
    [found] = invariants.replicas_apart([placed("v0", 0, "a"), placed("v0", 1, "a")])
    assert "replicas 0 and 1 both on pnode a" in found


def test_slot_history_catches_one_epoch_on_two_pnodes() -> None:
    history = invariants.SlotHistory()
    assert history.observe([placed("v0", 0, "a", epoch=1)]) == []
    assert history.observe([placed("v0", 0, "b", epoch=2)]) == []  # moved, new epoch: fine
    [(name, detail)] = history.observe([placed("v0", 0, "c", epoch=2)])
    assert name == "one-pnode-per-slot-epoch"
    assert "earlier on b" in detail


def test_slot_history_catches_an_epoch_going_backwards() -> None:
    history = invariants.SlotHistory()
    history.observe([placed("v0", 0, "a", epoch=3)])
    found = history.observe([placed("v0", 0, "a", epoch=2)])
    assert ("epochs-forward", "slot net.v0.0 at epoch 2 after epoch 3") in found


def test_resolution_catches_expired_unknown_and_superseded_endpoints() -> None:
    slot = allocation.slot_name("net", "v0", 0)
    epochs = {slot: 2}
    sound = [invariants.Resolved(slot, "a", 2)]
    assert (
        invariants.resolution(sound, lease_expiry={"a": 11.0}, slot_epochs=epochs, now=10.0) == []
    )
    expired = invariants.resolution(sound, lease_expiry={"a": 10.0}, slot_epochs=epochs, now=10.0)
    assert [name for name, _ in expired] == ["resolution-live"]
    unknown = invariants.resolution(sound, lease_expiry={}, slot_epochs=epochs, now=10.0)
    assert "never held" in unknown[0][1]
    stale = [invariants.Resolved(slot, "a", 1)]
    superseded = invariants.resolution(
        stale, lease_expiry={"a": 11.0}, slot_epochs=epochs, now=10.0
    )
    assert superseded == [
        ("resolution-current", f"slot {slot} resolved at epoch 1, the store's is 2")
    ]


def test_fencing_catches_a_heartbeat_accepted_after_expiry() -> None:
    assert invariants.fencing(accepted=True, lease_expiry=11.0, now=10.0, pnode="a") is None
    assert invariants.fencing(accepted=False, lease_expiry=9.0, now=10.0, pnode="a") is None
    assert invariants.fencing(accepted=True, lease_expiry=9.0, now=10.0, pnode="a")
    assert invariants.fencing(accepted=True, lease_expiry=None, now=10.0, pnode="a")


def test_stranded_pending_is_reported_once_past_its_bound() -> None:
    fleet = nodes("a", "b")
    pending = [placed("v0", 0, "a"), placed("v1", 0, "b")]
    running = placed("v2", 0, "a")
    running.status.phase = "Running"
    held = invariants.pending_on_live([*pending, running], fleet, live=["a"])
    assert held == ["net.v0.0@1 on a"]  # b's agent is not live; Running is not Pending
    since = invariants.Since(bound=5.0)
    assert since.observe(held, now=0.0) == []
    assert since.observe(held, now=5.0) == []
    assert since.observe(held, now=6.0) == held
    assert since.observe(held, now=7.0) == []  # its clock restarted
    assert since.observe([], now=8.0) == []
    assert since.observe(held, now=20.0) == []  # a new episode


def test_unplaced_names_slots_without_a_live_ready_pnode_and_their_epoch() -> None:
    fleet = nodes("a", "b", "c")
    fleet["c"].status.phase = "NotReady"
    allocs = [placed("v0", 0, "a"), placed("v1", 0, "b"), placed("v2", 0, "c", epoch=4)]
    desired = {"net": ["net.v0.0", "net.v1.0", "net.v2.0", "net.v3.0"]}
    everyone = ["a", "b", "c"]
    assert invariants.unplaced(desired, allocs, fleet, everyone) == ["net.v2.0@4", "net.v3.0@0"]
    assert invariants.unplaced(desired, allocs, fleet, ["a"]) == [
        "net.v1.0@1",
        "net.v2.0@4",
        "net.v3.0@0",
    ]
    assert invariants.unplaced({"net": ["net.v0.0"]}, allocs, fleet, everyone) == []


def test_convergence_restarts_when_a_slot_is_re_placed() -> None:
    since = invariants.Since(bound=10.0)
    assert since.observe(["net.v0.0@1"], now=0.0) == []
    assert since.observe(["net.v0.0@2"], now=8.0) == []  # re-placed, its new host failed
    assert since.observe(["net.v0.0@2"], now=16.0) == []
    assert since.observe(["net.v0.0@2"], now=19.0) == ["net.v0.0@2"]


def bugged(fleet: dict[str, pnode.PNode], name: str) -> None:
    fleet[name].status.trust.bugged = True
    fleet[name].status.trust.strikes = 3


def test_liars_bugged_catches_a_liar_past_the_limit_and_not_bugged_past_the_bound() -> None:
    fleet = nodes("liar", "other")
    fleet["liar"].metadata.uid = "u1"
    lies = {("liar", "u1"): invariants.Lies()}
    for t in (10.0, 20.0):
        lies[("liar", "u1")].add(t, limit=3)
    assert invariants.liars_bugged(lies, fleet, now=1000.0, bound=50.0) == []  # under the limit
    lies[("liar", "u1")].add(30.0, limit=3)
    assert lies[("liar", "u1")].reached == 30.0
    assert invariants.liars_bugged(lies, fleet, now=80.0, bound=50.0) == []  # within the bound
    [found] = invariants.liars_bugged(lies, fleet, now=81.0, bound=50.0)
    assert "pnode liar: 3 judged lies" in found
    bugged(fleet, "liar")
    assert invariants.liars_bugged(lies, fleet, now=81.0, bound=50.0) == []
    # A record made again (another uid) starts with fresh trust: the old lies are not its.
    fresh = nodes("liar")
    fresh["liar"].metadata.uid = "u2"
    assert invariants.liars_bugged(lies, fresh, now=81.0, bound=50.0) == []
    assert invariants.liars_bugged(lies, {}, now=81.0, bound=50.0) == []


def test_honest_not_bugged_catches_a_bugged_pnode_that_never_lied() -> None:
    fleet = nodes("liar", "honest")
    bugged(fleet, "liar")
    assert invariants.honest_not_bugged(fleet, {"liar"}) == []
    bugged(fleet, "honest")
    [found] = invariants.honest_not_bugged(fleet, {"liar"})
    assert found.startswith("pnode honest is Bugged but never lied")


def test_bugged_placements_catches_a_slot_moved_onto_a_long_bugged_pnode() -> None:
    watch = invariants.BuggedPlacements(settle=10.0)
    assert watch.observe([placed("v0", 0, "b")], {"b": 0.0}, now=100.0) == []  # first look
    # Kept where it was, re-issued at a new epoch: not a placement.
    assert watch.observe([placed("v0", 0, "b", epoch=2)], {"b": 0.0}, now=200.0) == []
    # Bugged only 5 s before the previous look: the views may not have known.
    assert watch.observe([placed("v1", 0, "c")], {"c": 195.0}, now=300.0) == []
    [found] = watch.observe(
        [placed("v1", 0, "c"), placed("v2", 0, "d")], {"c": 195.0, "d": 250.0}, now=400.0
    )
    assert found == "slot net.v2.0 epoch 1 placed on pnode d, Bugged since t=250"


def test_superseded_by_migration_spares_only_a_fresh_migration_off_a_bugged_pnode() -> None:
    stale = invariants.Resolved("net.v0.0", "b", 1)
    epochs = {"net.v0.0": 2}

    def split(**changes: object) -> tuple[int, int]:
        kwargs: dict[str, object] = {
            "slot_epochs": epochs,
            "placed_at": {("net.v0.0", 2): 50.0},
            "bugged": {"b"},
            "refreshed_at": 40.0,
        } | changes
        judged, spared = invariants.superseded_by_migration([stale], **kwargs)  # type: ignore[arg-type]
        return len(judged), len(spared)

    assert split() == (0, 1)
    assert split(refreshed_at=60.0) == (1, 0)  # the view had read the new epoch
    assert split(bugged=set()) == (1, 0)  # superseded on a healthy PNode: judged
    assert split(placed_at={}) == (1, 0)
    current = invariants.Resolved("net.v0.0", "b", 2)
    judged, spared = invariants.superseded_by_migration(
        [current], slot_epochs=epochs, placed_at={}, bugged={"b"}, refreshed_at=0.0
    )
    assert (judged, spared) == ([current], [])


def test_every_invariant_named_has_a_case_here() -> None:
    covered = {
        "capacity", "one-pnode-per-slot-epoch", "replicas-apart", "epochs-forward",
        "resolution-live", "resolution-current", "fencing", "stranded-pending", "convergence",
        "liars-bugged", "honest-not-bugged", "no-placement-on-bugged",
        "no-crash",  # the run loop's: tests/sim/test_run.py
    }  # fmt: skip
    assert set(invariants.NAMES) == covered
