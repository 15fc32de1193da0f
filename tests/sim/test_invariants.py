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


def test_every_invariant_named_has_a_case_here() -> None:
    covered = {
        "capacity", "one-pnode-per-slot-epoch", "replicas-apart", "epochs-forward",
        "resolution-live", "resolution-current", "fencing", "stranded-pending", "convergence",
        "no-crash",  # the run loop's: tests/sim/test_run.py
    }  # fmt: skip
    assert set(invariants.NAMES) == covered
