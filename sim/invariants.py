"""The design's invariants as pure checks over records the simulator reads: no I/O, no clock.

Each check takes plain records (and, for the ones about time, `now` and a bound) and returns
the violations it found, each naming the invariant and what broke it. Trackers remember what
a single snapshot cannot show (the highest epoch a slot ever had, how long a slot has been
Pending). A check that cannot fail is a defect: tests/sim/test_invariants.py breaks each one.
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence

from api.resources import allocation, pnode

#: Every invariant the simulator checks, in report order.
NAMES = (
    "capacity",
    "one-pnode-per-slot-epoch",
    "replicas-apart",
    "epochs-forward",
    "resolution-live",
    "resolution-current",
    "fencing",
    "stranded-pending",
    "convergence",
    "liars-bugged",
    "honest-not-bugged",
    "no-placement-on-bugged",
    "no-crash",
)


@dataclasses.dataclass(frozen=True, slots=True)
class Violation:
    invariant: str
    at: float
    detail: str

    def line(self) -> str:
        return f"t={self.at:.1f} {self.invariant}: {self.detail}"


def capacity(
    pnodes: Mapping[str, pnode.PNode], allocations: Iterable[allocation.Allocation]
) -> list[str]:
    """No PNode holds allocations needing more than its declared capacity (invariant 1), and
    its recorded accounting is within capacity too."""
    cpu: dict[str, int] = defaultdict(int)
    memory: dict[str, int] = defaultdict(int)
    for alloc in allocations:
        cpu[alloc.spec.pnode] += alloc.spec.resources.cpu
        memory[alloc.spec.pnode] += alloc.spec.resources.memory
    found = []
    for name in sorted(pnodes):
        cap = pnodes[name].spec.capacity
        held = pnodes[name].status.allocated
        if cpu[name] > cap.cpu or memory[name] > cap.memory:
            found.append(
                f"pnode {name}: allocations need cpu {cpu[name]}m memory {memory[name]},"
                f" capacity cpu {cap.cpu}m memory {cap.memory}"
            )
        if held.cpu > cap.cpu or held.memory > cap.memory:
            found.append(
                f"pnode {name}: status.allocated cpu {held.cpu}m memory {held.memory} over"
                f" capacity cpu {cap.cpu}m memory {cap.memory}"
            )
    return found


def replicas_apart(allocations: Iterable[allocation.Allocation]) -> list[str]:
    """Replicas of one VNode sit on different PNodes (invariant 2)."""
    where: dict[tuple[str, str], dict[str, int]] = defaultdict(dict)
    found = []
    for alloc in sorted(allocations, key=lambda a: a.name):
        spec = alloc.spec
        seen = where[(spec.network, spec.vnode)]
        if spec.pnode in seen:
            found.append(
                f"{spec.network}/{spec.vnode}: replicas {seen[spec.pnode]} and {spec.replica}"
                f" both on pnode {spec.pnode}"
            )
        seen[spec.pnode] = spec.replica
    return found


class SlotHistory:
    """Across the whole run: a (slot, epoch) is only ever on one PNode (invariant 2), and a
    slot's epoch never goes backwards (fencing relies on it)."""

    def __init__(self) -> None:
        self.highest: dict[str, int] = {}
        self.owner: dict[tuple[str, int], str] = {}

    def observe(self, allocations: Iterable[allocation.Allocation]) -> list[tuple[str, str]]:
        found = []
        for alloc in sorted(allocations, key=lambda a: a.name):
            slot, epoch, node = alloc.name, alloc.spec.epoch, alloc.spec.pnode
            owner = self.owner.setdefault((slot, epoch), node)
            if owner != node:
                found.append(
                    (
                        "one-pnode-per-slot-epoch",
                        f"slot {slot} epoch {epoch} on pnode {node}, earlier on {owner}",
                    )
                )
            highest = self.highest.get(slot, 0)
            if epoch < highest:
                found.append(
                    ("epochs-forward", f"slot {slot} at epoch {epoch} after epoch {highest}")
                )
            self.highest[slot] = max(highest, epoch)
        return found


@dataclasses.dataclass(frozen=True, slots=True)
class Resolved:
    """One endpoint a resolution answered: which slot, on which PNode, at which epoch."""

    slot: str
    pnode: str
    epoch: int


def resolution(
    answered: Iterable[Resolved],
    *,
    lease_expiry: Mapping[str, float],
    slot_epochs: Mapping[str, int],
    now: float,
) -> list[tuple[str, str]]:
    """Resolution never returns an endpoint whose lease has expired (by the simulator's
    ground truth: the last heartbeat any replica accepted) or whose epoch is superseded
    (by the store's allocation for the slot) (invariant 3)."""
    found = []
    for item in answered:
        expiry = lease_expiry.get(item.pnode)
        if expiry is None or expiry <= now:
            found.append(
                (
                    "resolution-live",
                    f"slot {item.slot} resolved to pnode {item.pnode} whose lease"
                    f" {'never held' if expiry is None else f'expired at t={expiry:.1f}'}",
                )
            )
        current = slot_epochs.get(item.slot)
        if current != item.epoch:
            found.append(
                (
                    "resolution-current",
                    f"slot {item.slot} resolved at epoch {item.epoch}, the store's is {current}",
                )
            )
    return found


def superseded_by_migration(
    answered: Iterable[Resolved],
    *,
    slot_epochs: Mapping[str, int],
    placed_at: Mapping[tuple[str, int], float],
    bugged: Iterable[str],
    refreshed_at: float,
) -> tuple[list[Resolved], list[Resolved]]:
    """Split endpoints into those `resolution` judges and those it must not: an endpoint at
    a superseded epoch on a Bugged PNode, whose slot's current epoch was placed
    (`placed_at`: (slot, epoch) → when the network loop wrote it) after the answering
    replica's view last read the store (`refreshed_at`). The slot migrated off a PNode that
    is still alive (its lease holds, so nothing else tells the view), written by another
    replica's loop, and the view cannot know before its next refresh (the server's view
    lags by its refresh, 0.25 s; the simulator's by up to `view_refresh`)."""
    judged, tolerated = [], []
    flagged = set(bugged)
    for item in answered:
        current = slot_epochs.get(item.slot)
        at = placed_at.get((item.slot, current)) if current is not None else None
        if (
            item.pnode in flagged
            and current is not None
            and current > item.epoch
            and at is not None
            and at > refreshed_at
        ):
            tolerated.append(item)
        else:
            judged.append(item)
    return judged, tolerated


def fencing(*, accepted: bool, lease_expiry: float | None, now: float, pnode: str) -> str | None:
    """A heartbeat after the lease expired is refused (invariant 3): the agent must register
    again. `lease_expiry` is the ground truth for the incarnation the heartbeat presented."""
    if accepted and (lease_expiry is None or lease_expiry <= now):
        return f"pnode {pnode}: heartbeat accepted after its lease expired at t={lease_expiry}"
    return None


class Since:
    """How long each of a set of conditions has held, and which held longer than `bound`."""

    def __init__(self, bound: float) -> None:
        self.bound = bound
        self.since: dict[str, float] = {}

    def observe(self, holding: Iterable[str], now: float) -> list[str]:
        """Keys of `holding` that have held continuously for more than `bound`; each is
        reported once per episode (its clock restarts)."""
        current = set(holding)
        self.since = {k: t for k, t in self.since.items() if k in current}
        late = []
        for key in sorted(current):
            start = self.since.setdefault(key, now)
            if now - start > self.bound:
                late.append(key)
                self.since[key] = now
        return late


def pending_on_live(
    allocations: Iterable[allocation.Allocation],
    pnodes: Mapping[str, pnode.PNode],
    live: Iterable[str],
) -> list[str]:
    """Allocations still Pending on a Ready PNode whose agent is alive and heartbeating: each
    should turn Running at its agent's next heartbeats (the `stranded-pending` condition)."""
    alive = set(live)
    return sorted(
        f"{a.name}@{a.spec.epoch} on {a.spec.pnode}"
        for a in allocations
        if a.status.phase == "Pending"
        and a.spec.pnode in alive
        and a.spec.pnode in pnodes
        and pnodes[a.spec.pnode].status.phase == "Ready"
        and a.spec.pnode_incarnation == pnodes[a.spec.pnode].status.incarnation
    )


def unplaced(
    desired: Mapping[str, Sequence[str]],
    allocations: Iterable[allocation.Allocation],
    pnodes: Mapping[str, pnode.PNode],
    live: Iterable[str],
) -> list[str]:
    """Desired slots (`desired`: network → slot names) with no allocation on a live, Ready
    PNode at its current incarnation, each as `slot@epoch` (epoch 0: no allocation). The
    epoch is part of the key so that a slot the loop re-placed starts a new episode: the
    `convergence` bound is on how long the product takes to react to a fault, and a new
    host failing in turn is a new fault."""
    alive = set(live)
    current = {a.name: a for a in allocations}
    found = []
    for net in sorted(desired):
        for slot in desired[net]:
            a = current.get(slot)
            node = pnodes.get(a.spec.pnode) if a is not None else None
            if (
                a is None
                or node is None
                or a.spec.pnode not in alive
                or node.status.phase != "Ready"
                or a.spec.pnode_incarnation != node.status.incarnation
            ):
                found.append(f"{slot}@{0 if a is None else a.spec.epoch}")
    return found


@dataclasses.dataclass(slots=True)
class Lies:
    """A liar's judged lies against one PNode record (its uid: a record deleted and made
    again starts with fresh trust): results that failed a check and were reported with
    evidence, and accusations of its own that were refused (each costs one strike), and
    when the count reached the trust book's strike limit."""

    count: int = 0
    reached: float | None = None

    def add(self, now: float, limit: int) -> None:
        self.count += 1
        if self.count >= limit and self.reached is None:
            self.reached = now


def liars_bugged(
    lies: Mapping[tuple[str, str], Lies],
    pnodes: Mapping[str, pnode.PNode],
    *,
    now: float,
    bound: float,
) -> list[str]:
    """A liar whose record took `strike_limit` judged lies is Bugged within `bound` of the
    last of them, for as long as that record exists (`lies`: (pnode, record uid) → Lies)."""
    found = []
    for (name, uid), seen in sorted(lies.items()):
        node = pnodes.get(name)
        if seen.reached is None or node is None or node.metadata.uid != uid:
            continue
        if now - seen.reached > bound and not node.status.trust.bugged:
            found.append(
                f"pnode {name}: {seen.count} judged lies, the limit reached at"
                f" t={seen.reached:.0f}, not Bugged {now - seen.reached:.0f}s later"
                f" (strikes {node.status.trust.strikes})"
            )
    return found


def honest_not_bugged(pnodes: Mapping[str, pnode.PNode], liars: Iterable[str]) -> list[str]:
    """No honest PNode is ever Bugged: every strike must be earned by the one struck."""
    lying = set(liars)
    return [
        f"pnode {name} is Bugged but never lied (strikes {node.status.trust.strikes}: "
        f"{'; '.join(e.message for e in node.status.validation_events[-3:])})"
        for name, node in sorted(pnodes.items())
        if node.status.trust.bugged and name not in lying
    ]


class BuggedPlacements:
    """Bugged PNodes get no new placements (the scheduler's filter): a slot that moved onto
    a PNode since the previous observation must not be on one that was already Bugged
    `settle` seconds before that observation (`settle`: how long a replica's view may take
    to learn of it). A slot re-issued at a new epoch on the PNode it was on is not a new
    placement (a Bugged PNode with nowhere to migrate to keeps its work)."""

    def __init__(self, settle: float) -> None:
        self.settle = settle
        self.seen: set[tuple[str, str]] = set()
        self.previous: float | None = None

    def observe(
        self,
        allocations: Iterable[allocation.Allocation],
        bugged_since: Mapping[str, float],
        now: float,
    ) -> list[str]:
        """`bugged_since`: Bugged PNodes → when they became Bugged (simulated seconds)."""
        found = []
        current = set()
        for alloc in sorted(allocations, key=lambda a: a.name):
            key = (alloc.name, alloc.spec.pnode)
            current.add(key)
            if key in self.seen or self.previous is None:
                continue
            since = bugged_since.get(alloc.spec.pnode)
            if since is not None and since + self.settle <= self.previous:
                found.append(
                    f"slot {alloc.name} epoch {alloc.spec.epoch} placed on pnode "
                    f"{alloc.spec.pnode}, Bugged since t={since:.0f}"
                )
        self.seen = current
        self.previous = now
        return found
