"""The soak's invariants, checked from what the public API showed: pure, no I/O, no clock.

`benchmarks.soak` polls the cluster (ListPNodes, ListAllocations, BatchResolve through a
rotating replica) and feeds each poll round here as a `Round`, with the times it started
and ended on the soak's own clock; it also says when it brought a process down or up. The
`Checker` keeps counts and the worst cases, and `verdicts()` turns them into one `Verdict`
per invariant, each with its evidence. Times are seconds since the soak started.

What is checked, and why it can be judged from the outside:
- capacity: each PNode's accounted allocation, and the sum of the allocations listed on it,
  within its declared capacity (DESIGN.md invariant 1).
- one PNode per (slot, epoch): every (network, vnode, replica, epoch) seen, in a list or
  in a resolution, on exactly one PNode (invariant 2).
- monotonic epochs: a slot's epoch in one replica's answers never lower than that replica
  showed in a poll that had ended before this one started, and never lower in a resolution
  than any earlier answer showed (invariant 3: no superseded epoch). ListAllocations is
  served from each replica's view, so one replica's list may trail another's by its
  refresh: that is counted as evidence, not failed.
- no expired endpoint: resolution never names a PNode whose process the soak had stopped or
  killed more than a lease (+ margin for a heartbeat in flight) before the poll started,
  and still had down when it ended (invariant 3). The soak knows when a lease must have run
  out because it is the one that silenced the agent.
- nothing stranded: no allocation Pending on a Ready PNode longer than `pending_bound`; the
  slots of a killed (or long-stopped) agent Running elsewhere, at a higher epoch and
  resolvable, within lease + grace + `move_slack` of the fault.
- running agents stay Ready: a PNode whose agent has run untouched for longer than lease +
  grace (+ 1 s) is Ready; if not, its lease ran out for time the orchestrator lost.
- re-convergence: after each fault heals, every VNode resolvable with all its replicas,
  every allocation Running on a Ready PNode and every running agent's PNode Ready, within
  lease + grace + `move_slack`.
"""

from __future__ import annotations

import dataclasses
import statistics
from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

#: (network, vnode, replica)
Slot = tuple[str, str, int]


@dataclasses.dataclass(frozen=True, slots=True)
class PNodeSeen:
    name: str
    phase: str
    incarnation: int
    cpu: int
    memory: int
    allocated_cpu: int
    allocated_memory: int


@dataclasses.dataclass(frozen=True, slots=True)
class AllocationSeen:
    network: str
    vnode: str
    replica: int
    pnode: str
    epoch: int
    phase: str
    cpu: int
    memory: int

    @property
    def slot(self) -> Slot:
        return (self.network, self.vnode, self.replica)


@dataclasses.dataclass(frozen=True, slots=True)
class EndpointSeen:
    network: str
    vnode: str
    replica: int
    pnode: str
    epoch: int

    @property
    def slot(self) -> Slot:
        return (self.network, self.vnode, self.replica)


@dataclasses.dataclass(frozen=True, slots=True)
class Round:
    """One poll of the cluster through `replica`; a part is None when its call failed."""

    started: float
    ended: float
    replica: str
    pnodes: Sequence[PNodeSeen] | None
    allocations: Sequence[AllocationSeen] | None
    endpoints: Sequence[EndpointSeen] | None
    #: Agents whose process was running (not stopped, not killed) for the whole round.
    agents_up: frozenset[str]

    @property
    def complete(self) -> bool:
        return None not in (self.pnodes, self.allocations, self.endpoints)


@dataclasses.dataclass(slots=True)
class Verdict:
    name: str
    #: None: not evaluated (nothing to judge).
    holds: bool | None
    summary: str
    evidence: list[str] = dataclasses.field(default_factory=list)


@dataclasses.dataclass(slots=True)
class _Move:
    fault: int
    pnode: str
    at: float
    slots: dict[Slot, int]
    done_at: float | None = None


@dataclasses.dataclass(slots=True)
class _Healing:
    fault: int
    what: str
    began: float
    healed_at: float
    converged_at: float | None = None


def _fmt(seconds: float) -> str:
    return f"{seconds:.1f} s"


def _behind(
    highest: dict[Any, tuple[int, float, str]],
    key: Any,
    slot: Slot,
    epoch: int,
    r: Round,
    source: str,
) -> str | None:
    """Evidence when `epoch` of `slot` is below one that a poll which ended before `r`
    started showed under `key`; records `epoch` as the highest under `key` when it is."""
    best = highest.get(key)
    found = None
    if best is not None and epoch < best[0] and r.started > best[1]:
        found = (
            f"t={_fmt(r.ended)} {'/'.join(map(str, slot))}: epoch {epoch} from {source}"
            f" after epoch {best[0]} from {best[2]} (poll ended t={_fmt(best[1])})"
        )
    if best is None or epoch > best[0]:
        highest[key] = (epoch, r.ended, source)
    return found


class Checker:
    def __init__(
        self,
        *,
        desired: Mapping[str, Mapping[str, int]],
        lease: float,
        grace: float,
        pending_bound: float = 10.0,
        move_slack: float = 10.0,
        expiry_margin: float = 1.0,
    ) -> None:
        """`desired`: network → vnode → replicas, what every converged resolution shows."""
        self.desired = {n: dict(v) for n, v in desired.items()}
        self.lease = lease
        self.grace = grace
        self.move_slack = move_slack
        self.bound = lease + grace + move_slack
        self.pending_bound = pending_bound
        self.expiry_margin = expiry_margin
        self.rounds = 0
        self.complete_rounds = 0
        self.poll_errors: dict[str, int] = defaultdict(int)
        # capacity
        self.capacity_checks = 0
        self.capacity_violations: list[str] = []
        # (slot, epoch) → PNodes
        self.slot_epoch_observations = 0
        self._slot_epoch_pnodes: dict[tuple[Slot, int], set[str]] = defaultdict(set)
        # monotonic epochs: slot → (max epoch, when the poll that showed it ended, source)
        self.epoch_observations = 0
        self._max_epoch: dict[Any, tuple[int, float, str]] = {}
        self._max_by_replica: dict[Any, tuple[int, float, str]] = {}
        self.epoch_violations: list[str] = []
        #: ListAllocations answers behind another replica's earlier answer (cache lag).
        self.list_lag: list[str] = []
        # expired endpoints
        self.endpoints_checked = 0
        self._down: dict[str, list[list[float | None]]] = defaultdict(list)
        self.expired_violations: list[str] = []
        # pending on a Ready PNode: (slot, epoch) → first seen so
        self._pending_since: dict[tuple[Slot, int], float] = {}
        self.pending_worst: tuple[float, str] = (0.0, "")
        self.pending_violations: dict[tuple[Slot, int], float] = {}
        # PNodes not Ready although their agent ran the whole time: pnode → [first, last seen]
        self.ready_checks = 0
        self._not_ready: dict[str, list[tuple[float, float, str]]] = defaultdict(list)
        # moves and re-convergence
        self.moves: list[_Move] = []
        self.healings: list[_Healing] = []
        self._last_allocations: Sequence[AllocationSeen] = ()
        # processes
        self.exits: list[str] = []

    # -- what the soak did --------------------------------------------------------------

    def agent_down(self, name: str, at: float) -> None:
        self._down[name].append([at, None])

    def agent_up(self, name: str, at: float) -> None:
        for interval in self._down[name]:
            if interval[1] is None:
                interval[1] = at

    def expect_moves(self, fault: int, pnode: str, at: float) -> None:
        """The agent of `pnode` is gone for good (killed, or stopped past lease + grace):
        the slots it held at the last poll must move within the bound."""
        slots = {a.slot: a.epoch for a in self._last_allocations if a.pnode == pnode}
        self.moves.append(_Move(fault, pnode, at, slots))

    def healed(self, fault: int, what: str, *, began: float, at: float) -> None:
        """Fault `fault`, begun at `began`, healed (restart, SIGCONT) at `at`: the cluster
        must re-converge within the bound."""
        self.healings.append(_Healing(fault, what, began, at))

    def process_exited(self, name: str, at: float, code: int | None, tail: str) -> None:
        last = tail.strip().splitlines()[-1:] or ["(empty log)"]
        self.exits.append(f"t={_fmt(at)} {name} exited with {code}; last log line: {last[0]}")

    # -- what the API showed -------------------------------------------------------------

    def observe(self, r: Round) -> None:
        self.rounds += 1
        for part, seen in (("pnodes", r.pnodes), ("allocations", r.allocations),
                           ("endpoints", r.endpoints)):  # fmt: skip
            if seen is None:
                self.poll_errors[part] += 1
        if r.pnodes is not None:
            self._capacity(r)
            self._healthy_ready(r)
        if r.allocations is not None:
            self._slots(r, [(a.slot, a.epoch, a.pnode) for a in r.allocations], resolution=False)
            self._last_allocations = r.allocations
        if r.endpoints is not None:
            self._slots(r, [(e.slot, e.epoch, e.pnode) for e in r.endpoints], resolution=True)
            self._expired(r)
        if r.pnodes is not None and r.allocations is not None:
            self._pending(r)
        if r.complete:
            self.complete_rounds += 1
            self._moves(r)
            self._convergence(r)

    def _capacity(self, r: Round) -> None:
        assert r.pnodes is not None
        held: dict[str, list[int]] = defaultdict(lambda: [0, 0])
        for a in r.allocations or ():
            held[a.pnode][0] += a.cpu
            held[a.pnode][1] += a.memory
        for p in r.pnodes:
            self.capacity_checks += 1
            cpu, memory = held.get(p.name, [0, 0])
            for what, used, cap in (
                ("accounted cpu", p.allocated_cpu, p.cpu),
                ("accounted memory", p.allocated_memory, p.memory),
                ("cpu of listed allocations", cpu, p.cpu),
                ("memory of listed allocations", memory, p.memory),
            ):
                if used > cap:
                    self.capacity_violations.append(
                        f"t={_fmt(r.ended)} {p.name}: {what} {used} > capacity {cap}"
                    )

    def _healthy_ready(self, r: Round) -> None:
        """An agent that has run, neither stopped nor killed, for longer than lease + grace
        (+ 1 s) must be Ready: its lease can only run out for time the orchestrator or the
        store lost, which is not the PNode's failure (issue 16, items 1 and 5)."""
        assert r.pnodes is not None
        settle = self.lease + self.grace + 1.0
        for p in r.pnodes:
            if p.name not in r.agents_up:
                continue
            ends = [end for _, end in self._down.get(p.name, ()) if end is not None]
            if max(ends, default=0.0) + settle > r.started:
                continue
            self.ready_checks += 1
            if p.phase == "Ready":
                continue
            episodes = self._not_ready[p.name]
            if episodes and episodes[-1][2] == p.phase and r.started - episodes[-1][1] < 2.0:
                episodes[-1] = (episodes[-1][0], r.ended, p.phase)
            else:
                episodes.append((r.started, r.ended, p.phase))

    def _slots(self, r: Round, seen: list[tuple[Slot, int, str]], *, resolution: bool) -> None:
        source = f"{'resolution' if resolution else 'ListAllocations'} via {r.replica}"
        for slot, epoch, pnode in seen:
            self.slot_epoch_observations += 1
            self._slot_epoch_pnodes[(slot, epoch)].add(pnode)
            self.epoch_observations += 1
            # One replica's answers (its view) never go backwards, and resolution never names
            # an epoch older than one any answer showed before: that one is superseded. A
            # list from one replica's cache may trail another's by its refresh: counted.
            own = _behind(self._max_by_replica, (r.replica, slot), slot, epoch, r, source)
            anywhere = _behind(self._max_epoch, slot, slot, epoch, r, source)
            if own is not None:
                self.epoch_violations.append(f"{own} (the same replica's view went back)")
            elif anywhere is not None and resolution:
                self.epoch_violations.append(f"{anywhere} (a superseded epoch resolved)")
            elif anywhere is not None:
                self.list_lag.append(anywhere)

    def _expired(self, r: Round) -> None:
        assert r.endpoints is not None
        for e in r.endpoints:
            self.endpoints_checked += 1
            for start, end in self._down.get(e.pnode, ()):
                assert start is not None
                expired = start + self.lease + self.expiry_margin
                if expired < r.started and (end is None or end > r.ended):
                    self.expired_violations.append(
                        f"t={_fmt(r.started)} via {r.replica}: {e.network}/{e.vnode}"
                        f"[{e.replica}] on {e.pnode} epoch {e.epoch}, whose agent was down"
                        f" since t={_fmt(start)} (lease expired by t={_fmt(start + self.lease)})"
                    )

    def _pending(self, r: Round) -> None:
        assert r.pnodes is not None
        assert r.allocations is not None
        ready = {p.name for p in r.pnodes if p.phase == "Ready"}
        now: set[tuple[Slot, int]] = set()
        for a in r.allocations:
            if a.phase != "Pending" or a.pnode not in ready:
                continue
            key = (a.slot, a.epoch)
            now.add(key)
            since = self._pending_since.setdefault(key, r.ended)
            age = r.ended - since
            where = f"{'/'.join(map(str, a.slot))} epoch {a.epoch} on {a.pnode}"
            if age > self.pending_worst[0]:
                self.pending_worst = (age, f"{where} from t={_fmt(since)}")
            if age > self.pending_bound:
                self.pending_violations[key] = max(age, self.pending_violations.get(key, 0.0))
        for key in list(self._pending_since):
            if key not in now:
                del self._pending_since[key]

    def _moves(self, r: Round) -> None:
        assert r.allocations is not None
        assert r.endpoints is not None
        running = {(a.slot, a.epoch) for a in r.allocations if a.phase == "Running"}
        resolved = {(e.slot, e.epoch) for e in r.endpoints}
        for move in self.moves:
            if move.done_at is not None or r.started < move.at:
                continue
            if all(
                any(s == slot and e > old and (s, e) in resolved for s, e in running)
                for slot, old in move.slots.items()
            ):
                move.done_at = r.ended

    def converged(self, r: Round) -> bool:
        assert r.pnodes is not None
        assert r.allocations is not None
        assert r.endpoints is not None
        ready = {p.name for p in r.pnodes if p.phase == "Ready"}
        if not r.agents_up <= ready:
            return False
        if any(a.phase != "Running" or a.pnode not in ready for a in r.allocations):
            return False
        counts: dict[tuple[str, str], int] = defaultdict(int)
        for e in r.endpoints:
            counts[(e.network, e.vnode)] += 1
        return all(
            counts[(net, vnode)] == want
            for net, vnodes in self.desired.items()
            for vnode, want in vnodes.items()
        )

    def _convergence(self, r: Round) -> None:
        waiting = [h for h in self.healings if h.converged_at is None and r.started >= h.healed_at]
        if waiting and self.converged(r):
            for h in waiting:
                h.converged_at = r.ended

    def settled(self, fault: int) -> bool:
        """Every healing and move of `fault` done (the soak waits for this, or the bound)."""
        return all(h.converged_at is not None for h in self.healings if h.fault == fault) and all(
            m.done_at is not None for m in self.moves if m.fault == fault
        )

    # -- verdicts -------------------------------------------------------------------------

    def verdicts(self, *, accuracy: Verdict | None = None) -> list[Verdict]:
        found = [
            self._capacity_verdict(),
            self._slot_epoch_verdict(),
            self._epoch_verdict(),
            self._expired_verdict(),
            self._pending_verdict(),
            self._moves_verdict(),
            self._convergence_verdict(),
            self._ready_verdict(),
            self._exits_verdict(),
        ]
        if accuracy is not None:
            found.append(accuracy)
        return found

    def _capacity_verdict(self) -> Verdict:
        v = self.capacity_violations
        return Verdict(
            "capacity never over-committed", not v if self.capacity_checks else None,
            f"{self.capacity_checks:,} PNode checks (accounted and listed), {len(v)} over",
            v[:10],
        )  # fmt: skip

    def _slot_epoch_verdict(self) -> Verdict:
        doubled = {k: p for k, p in self._slot_epoch_pnodes.items() if len(p) > 1}
        evidence = [
            f"{'/'.join(map(str, slot))} epoch {epoch} on {sorted(pnodes)}"
            for (slot, epoch), pnodes in sorted(doubled.items())[:10]
        ]
        return Verdict(
            "one PNode per (slot, epoch)", not doubled if self.slot_epoch_observations else None,
            f"{self.slot_epoch_observations:,} observations of {len(self._slot_epoch_pnodes):,}"
            f" (slot, epoch) pairs; {len(doubled)} seen on two PNodes",
            evidence,
        )  # fmt: skip

    def _epoch_verdict(self) -> Verdict:
        v = self.epoch_violations
        highest = max((e for e, _, _ in self._max_epoch.values()), default=0)
        lag = self.list_lag
        evidence = v[:10]
        if lag:
            evidence.append(
                f"not counted: {len(lag)} ListAllocations answers from one replica's cache"
                f" behind an earlier answer of another (refresh lag), e.g. {lag[0]}"
            )
        return Verdict(
            "epochs never go backwards", not v if self.epoch_observations else None,
            f"{self.epoch_observations:,} observations of {len(self._max_epoch)} slots (highest"
            f" epoch {highest}); {len(v)} went backwards in one replica's answers or in a"
            " resolution",
            evidence,
        )  # fmt: skip

    def _expired_verdict(self) -> Verdict:
        v = self.expired_violations
        return Verdict(
            "no expired endpoint resolved", not v if self.endpoints_checked else None,
            f"{self.endpoints_checked:,} endpoints resolved; {len(v)} on a PNode whose agent was"
            f" down for longer than its lease ({self.lease:g} s + {self.expiry_margin:g} s)",
            v[:10],
        )  # fmt: skip

    def _pending_verdict(self) -> Verdict:
        v = self.pending_violations
        worst, where = self.pending_worst
        evidence = [
            f"{'/'.join(map(str, slot))} epoch {epoch}: Pending on a Ready PNode for >= {_fmt(age)}"
            for (slot, epoch), age in sorted(v.items(), key=lambda kv: -kv[1])[:10]
        ]
        if where:
            evidence.append(f"worst: {_fmt(worst)}, {where}")
        return Verdict(
            f"no allocation Pending on a Ready PNode > {self.pending_bound:g} s",
            not v if self.complete_rounds else None,
            f"{self.complete_rounds:,} polls; {len(v)} allocations over the bound; worst"
            f" {_fmt(worst)}",
            evidence,
        )  # fmt: skip

    def _moves_verdict(self) -> Verdict:
        times = [m.done_at - m.at for m in self.moves if m.done_at is not None]
        late = [m for m in self.moves if m.done_at is None or m.done_at - m.at > self.bound]
        evidence = [
            f"fault {m.fault}: {len(m.slots)} slots of {m.pnode} "
            + ("never moved" if m.done_at is None else f"moved after {_fmt(m.done_at - m.at)}")
            for m in late[:10]
        ]
        summary = f"{len(self.moves)} dead agents, {sum(len(m.slots) for m in self.moves)} slots;"
        if times:
            summary += f" moved in p50 {_fmt(statistics.median(times))}, max {_fmt(max(times))};"
        summary += f" {len(late)} over the bound {_fmt(self.bound)}"
        return Verdict(
            f"allocations on dead PNodes move within lease + grace + {self.move_slack:g} s",
            not late if self.moves else None, summary, evidence,
        )  # fmt: skip

    def _convergence_verdict(self) -> Verdict:
        times = [h.converged_at - h.healed_at for h in self.healings if h.converged_at is not None]
        late = [
            h for h in self.healings
            if h.converged_at is None or h.converged_at - h.healed_at > self.bound
        ]  # fmt: skip
        summary = f"{len(self.healings)} faults healed;"
        if times:
            summary += (
                f" re-converged in p50 {_fmt(statistics.median(times))}, max {_fmt(max(times))};"
            )
        summary += f" {len(late)} not within {_fmt(self.bound)}"
        evidence = [
            f"fault {h.fault} ({h.what}): "
            + ("never re-converged" if h.converged_at is None
               else f"re-converged {_fmt(h.converged_at - h.healed_at)} after healing")
            for h in late[:10]
        ]  # fmt: skip
        return Verdict(
            "re-convergence after each fault", not late if self.healings else None, summary,
            evidence,
        )  # fmt: skip

    def _ready_verdict(self) -> Verdict:
        episodes = sorted(
            (start, end, name, phase)
            for name, seen in self._not_ready.items()
            for start, end, phase in seen
        )
        evidence = [
            f"t={_fmt(start)}-{_fmt(end)} {name} {phase}, its agent running"
            + self._during(start)
            for start, end, name, phase in episodes[:20]
        ]
        return Verdict(
            "running agents stay Ready", not episodes if self.ready_checks else None,
            f"{self.ready_checks:,} checks of PNodes whose agent ran for > lease + grace + 1 s;"
            f" {len(episodes)} times one was seen not Ready"
            f" ({len({e[2] for e in episodes})} PNodes)",
            evidence,
        )  # fmt: skip

    def _during(self, at: float) -> str:
        """Which fault was last begun before `at`, for evidence."""
        before = [h for h in self.healings if h.began <= at]
        if not before:
            return ""
        last = max(before, key=lambda h: h.began)
        return f" (last fault: {last.fault}, {last.what}, began t={_fmt(last.began)})"

    def _exits_verdict(self) -> Verdict:
        return Verdict(
            "no process exits unless killed", not self.exits,
            f"{len(self.exits)} processes exited that the schedule did not kill",
            self.exits[:20],
        )  # fmt: skip

    def convergence_times(self) -> list[tuple[int, str, float, float | None]]:
        """(fault, what, held for, re-converged this long after healing)."""
        return [
            (h.fault, h.what, h.healed_at - h.began,
             None if h.converged_at is None else h.converged_at - h.healed_at)
            for h in self.healings
        ]  # fmt: skip

    def move_times(self) -> list[tuple[int, str, int, float | None]]:
        return [
            (m.fault, m.pnode, len(m.slots), None if m.done_at is None else m.done_at - m.at)
            for m in self.moves
        ]
