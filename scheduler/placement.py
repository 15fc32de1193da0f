"""Placing requests: filter, sample, score, pick; and batches that account as they go.

How one request is placed (Nomad's shape, kept sublinear in the number of PNodes):

1. Candidates are drawn lazily: first the PNodes the request would like (hosting a graph
   neighbour, then a sample of those holding its dataset), then every PNode in a seeded
   random order. A lazy Fisher-Yates shuffle draws each next candidate in O(1), so a
   request that finds its sample of feasible PNodes early never touches the rest of a big
   cluster.
2. Each candidate is filtered until a sample is feasible: `config.sample_size` PNodes for
   a critical request, `config.ordinary_sample_size` (fewer) for any other, whose
   preferred PNodes are drawn first anyway (Nomad's LimitIterator). The capability checks
   are cached per (request shape, node signature), so identical PNodes are checked once
   per call.
3. Only the feasible sample is scored; the best weighted score wins, ties going to the
   earliest drawn (random, since the draw order is), which spreads identical PNodes' load.
   A scorer that gives every PNode the same value for this request (`Named.uniform`: no
   dataset, no neighbour placed, no replica to spread from) is not called per PNode.
   Because the draw is lazy, a smaller sample is a prefix of a larger one with the same
   seed: limiting the sample can only change a choice whose winner was drawn late.
4. A critical request is first tried on PNodes at or above the trust floor only; if none of
   them is feasible, on PNodes with any earned trust (at least one valid result, not
   bugged); only then on every PNode, and the explanation says which tiers failed: trust is
   a scheduling preference, never a correctness requirement (DESIGN.md). The middle tier is
   why self-declared capacity earns nothing (issue 11): a fresh PNode claiming 64 cores
   has trust 0, so it never takes a critical VNode from established PNodes that fit it,
   however empty its claim makes it look to the least-allocated scorer.

Unschedulable is only ever the verdict of a full scan, so a feasible request is never
reported unschedulable, and the reason counts cover every PNode.
"""

from __future__ import annotations

import dataclasses
import heapq
import itertools
import operator
import random
from collections.abc import Iterable, Iterator, Sequence

from scheduler import config as config_module
from scheduler import explain, filters, model, scorers

_UNSET = object()

#: Trust above zero: the PNode has at least one valid result and is not bugged (any such
#: PNode has trust >= 1 / (1 + TRUST_HALF) / (1 + strikes), far above this).
EARNED_TRUST = 1e-9


@dataclasses.dataclass(frozen=True, slots=True)
class Entry:
    request: model.Request
    decision: explain.Decision


@dataclasses.dataclass(frozen=True, slots=True)
class Plan:
    """Decisions for a batch, in the order they were made (see `placement_order`)."""

    entries: tuple[Entry, ...]
    _by_key: dict[str, explain.Decision] = dataclasses.field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        by_key = {entry.request.key: entry.decision for entry in self.entries}
        object.__setattr__(self, "_by_key", by_key)

    def decision(self, key: str) -> explain.Decision:
        try:
            return self._by_key[key]
        except KeyError:
            raise KeyError(f"plan: no request for slot {key!r}") from None

    @property
    def placements(self) -> dict[str, str]:
        """Slot key -> PNode name, for the placed requests."""
        return {
            e.request.key: e.decision.pnode
            for e in self.entries
            if isinstance(e.decision, explain.Placed)
        }

    @property
    def unschedulable(self) -> tuple[Entry, ...]:
        return tuple(e for e in self.entries if isinstance(e.decision, explain.Unschedulable))


def placement_order(request: model.Request) -> tuple[object, ...]:
    """Sort key for a batch: critical first, then larger first, then by slot.

    Critical first so they take the trusted PNodes before ordinary work fills them. Larger
    first (first-fit decreasing): a big request placed early still finds room, while small
    ones fit into what is left; in the other order, small requests fragment every PNode and
    the big ones end up unschedulable. "Larger" compares the scarcest resource first:
    accelerators, then memory, then cpu. The slot key last makes the order total, so the
    plan does not depend on the order the caller listed the requests in.
    """
    return (
        not request.critical,
        -request.accelerator_count,
        -request.memory,
        -request.cpu,
        request.network,
        request.vnode,
        request.replica,
    )


def connected_order(requests: Iterable[model.Request]) -> list[model.Request]:
    """`placement_order`, except that once a VNode is placed its graph neighbours in the
    batch (`Request.neighbours`) come next, smallest `placement_order` first, before
    unrelated requests: so a new network is placed along its graph and each VNode after
    the first finds a neighbour to be near (`graph_affinity`), where in plain size order two
    VNodes that are not neighbours could each start a PNode of their own. Critical requests
    still all come first (a neighbour across that boundary waits for its group). Total,
    deterministic, O(n log n)."""
    ordered = sorted(requests, key=placement_order)
    by_vnode: dict[tuple[str, str], list[int]] = {}
    for i, request in enumerate(ordered):
        by_vnode.setdefault((request.network, request.vnode), []).append(i)
    done = [False] * len(ordered)
    out: list[model.Request] = []
    ready: list[int] = []  # a heap of positions in `ordered`: smallest placement_order first
    cursor = 0
    while len(out) < len(ordered):
        while ready and done[ready[0]]:
            heapq.heappop(ready)
        if ready:
            i = heapq.heappop(ready)
        else:
            while done[cursor]:
                cursor += 1
            i = cursor
        done[i] = True
        request = ordered[i]
        out.append(request)
        for name in request.neighbours:
            for j in by_vnode.get((request.network, name), ()):
                if not done[j] and ordered[j].critical == request.critical:
                    heapq.heappush(ready, j)
    return out


def place(
    request: model.Request,
    snapshot: model.Snapshot,
    *,
    seed: int,
    config: config_module.Config = config_module.DEFAULT,
) -> explain.Decision:
    return _Placer(snapshot, random.Random(seed), config).place(request)


def place_all(
    requests: Iterable[model.Request],
    snapshot: model.Snapshot,
    *,
    seed: int,
    config: config_module.Config = config_module.DEFAULT,
) -> Plan:
    """Place a batch against one working copy of `snapshot`, in `placement_order`.

    Each placement is charged to its PNode before the next request is placed, so a batch
    never over-commits a PNode, and replicas of one VNode placed in the batch avoid each
    other's PNodes, as they would avoid already-allocated replicas; a request is also near
    (`graph_affinity`) the PNodes its graph neighbours were placed on earlier in the batch,
    so a new network's VNodes gather as they would once placed. One rng, seeded once,
    serves the whole batch in that fixed order: same requests, snapshot and seed, same plan.
    """
    ordered = connected_order(requests)
    seen: set[str] = set()
    for request in ordered:
        if request.key in seen:
            raise ValueError(
                f"requests: slot {request.key!r} appears twice; each replica slot is placed "
                "at most once per plan"
            )
        seen.add(request.key)
    placer = _Placer(snapshot, random.Random(seed), config)
    placed_on: dict[tuple[str, str], set[str]] = {}
    entries = []
    for request in ordered:
        siblings = placed_on.get((request.network, request.vnode))
        near = frozenset().union(
            *(placed_on.get((request.network, n), ()) for n in request.neighbours)
        )
        effective = request
        if siblings or not near <= request.near:
            effective = dataclasses.replace(
                request, avoid=request.avoid | (siblings or set()), near=request.near | near
            )
        decision = placer.place(effective)
        if isinstance(decision, explain.Placed):
            placer.charge(decision.pnode, request)
            placed_on.setdefault((request.network, request.vnode), set()).add(decision.pnode)
        entries.append(Entry(request, decision))
    return Plan(tuple(entries))


def _shuffled(pool: Sequence[int], rng: random.Random) -> Iterator[int]:
    """`pool` in a uniformly random order, produced lazily: O(1) per item drawn.

    Fisher-Yates over a virtual array (`moved` holds only the slots that were swapped), so
    stopping after k items costs O(k), not O(len(pool)).
    """
    size = len(pool)
    moved: dict[int, int] = {}
    draw = rng.random
    for i in range(size):
        j = i + int(draw() * (size - i))
        if j >= size:  # draw() < 1, but guard against rounding up in the product
            j = size - 1
        picked = moved.get(j, j)
        moved[j] = moved.get(i, i)
        yield pool[picked]


@dataclasses.dataclass(slots=True)
class _Pass:
    """What one candidate scan found; `feasible` is in draw order."""

    feasible: list[int] = dataclasses.field(default_factory=list)
    reasons: dict[str, int] = dataclasses.field(default_factory=dict)
    rejected: list[explain.NodeVerdict] = dataclasses.field(default_factory=list)
    evaluated: int = 0


class _Placer:
    """Working state for one `place` / `place_all` call: node views, caches, the rng."""

    __slots__ = (
        "_by_request",
        "_cache",
        "_config",
        "_names",
        "_node_only",
        "_ordinary",
        "_rng",
        "_snapshot",
        "_static",
        "_unschedulable",
        "_version",
        "_views",
        "_weights",
    )

    def __init__(
        self, snapshot: model.Snapshot, rng: random.Random, config: config_module.Config
    ) -> None:
        self._snapshot = snapshot
        self._views = list(snapshot.nodes)
        self._rng = rng
        self._config = config
        active = scorers.active(config.weights)
        total = sum(weight for _, weight in active)
        self._names = tuple(named.name for named, _ in active)
        #: Normalized so the weighted sum is already the weighted mean, in [0, 1].
        self._weights = tuple(weight / total for _, weight in active) if total else ()
        self._by_request = tuple((n.score, n.uniform) for n, _ in active if not n.node_only)
        self._ordinary = min(config.ordinary_sample_size, config.sample_size)
        self._node_only = tuple(n.score for n, _ in active if n.node_only)
        #: Node position -> its node-only scores (history does not change within a call).
        self._static: dict[int, tuple[float, ...]] = {}
        #: Charges so far; a cached verdict is valid only for the version it was made at.
        self._version = 0
        #: (shape, critical) -> (version, full scan that found nothing, notes).
        self._unschedulable: dict[tuple[object, ...], tuple[int, _Pass, tuple[str, ...]]] = {}
        #: Request shape -> node signature -> first failed capability check (or None).
        self._cache: dict[tuple[int, int, str | None, int], dict[str, str | None]] = {}

    def charge(self, pnode: str, request: model.Request) -> None:
        self._version += 1
        position = self._snapshot.by_name[pnode]
        self._views[position] = self._views[position].with_allocation(request)

    def place(self, request: model.Request) -> explain.Decision:
        request = self._with_operators(request)
        memo_key = (request.shape, request.critical)
        memo = self._unschedulable.get(memo_key)
        if memo is not None and memo[0] == self._version:
            _, scanned, scanned_notes = memo
            explanation = self._explain(request, scanned, [], scanned_notes)
            return explain.Unschedulable(reasons=dict(scanned.reasons), explanation=explanation)
        snapshot = self._snapshot
        notes: tuple[str, ...] = ()
        if request.critical:
            placed, notes = self._place_critical(request)
            if placed is not None:
                return placed
        limit = self._config.sample_size if request.critical else self._ordinary
        found = self._scan(request, range(len(snapshot)), floor=None, limit=limit)
        if found.feasible:
            return self._pick(request, found, notes)
        if filters.ANTI_AFFINITY not in found.reasons:
            # Every PNode failed a capability check, which depends only on the request's
            # shape and on allocations; so until the next charge, any request of this shape
            # gets the same verdict, and a run of identical replicas that do not fit costs
            # one full scan instead of one each.
            self._unschedulable[memo_key] = (self._version, found, notes)
        explanation = self._explain(request, found, [], notes)
        return explain.Unschedulable(reasons=dict(found.reasons), explanation=explanation)

    def _with_operators(self, request: model.Request) -> model.Request:
        """`request` with the operator hints of the PNodes it avoids (its other replicas)."""
        hints: set[str] = set()
        for name in request.avoid:
            node = self._snapshot.node(name)
            if node is not None:
                hints |= node.operators
        if not hints or hints <= request.avoid_operators:
            return request
        return dataclasses.replace(request, avoid_operators=request.avoid_operators | hints)

    def _place_critical(
        self, request: model.Request
    ) -> tuple[explain.Placed | None, tuple[str, ...]]:
        """The request placed on the most trusted tier that fits it, or None and the notes
        explaining why every tier failed (the caller then considers all pnodes)."""
        snapshot, floor = self._snapshot, self._config.trust_floor
        tiers = [(floor, f"trust >= floor {floor:g}")]
        if floor > EARNED_TRUST:
            tiers.append((EARNED_TRUST, "earned trust"))
        notes: list[str] = []
        scanned = 0
        for tier_floor, label in tiers:
            trusted = snapshot.trusted_count(tier_floor)
            if 0 < trusted == len(snapshot):
                break  # every pnode qualifies: the full scan is this tier
            if trusted == scanned:  # nobody new in this tier
                if not notes:
                    notes.append(f"critical: no pnode has {label}")
                continue
            found = self._scan(
                request,
                snapshot.by_trust[:trusted],
                floor=tier_floor,
                limit=self._config.sample_size,
            )
            if found.feasible:
                if notes:
                    notes[-1] += f"; considered pnodes with {label}"
                return self._pick(request, found, tuple(notes)), ()
            why = ", ".join(
                f"{n} {r}"
                for r, n in explain.sorted_reasons(found.reasons)
                if r != filters.BELOW_TRUST_FLOOR
            )
            notes.append(f"critical: none of the {trusted} pnodes with {label} is feasible ({why})")
            scanned = trusted
        if notes:
            notes[-1] += "; considered all pnodes"
        return None, tuple(notes)

    def _candidates(self, request: model.Request, pool: Sequence[int]) -> Iterator[int]:
        """Each PNode at most once: the preferred ones first, then `pool` shuffled.

        Preferred: PNodes hosting a graph neighbour, then a random sample of those holding
        the request's dataset. Offering them first means a bounded random sample of a big
        cluster never misses the PNodes the affinity and locality scorers would favour.
        """
        snapshot = self._snapshot
        offered: set[int] = set()
        for name in sorted(request.near):
            position = snapshot.by_name.get(name)
            if position is not None and position not in offered:
                offered.add(position)
                yield position
        if request.dataset is not None:
            # At most a sample's worth: when thousands of PNodes hold a popular dataset but
            # few of them fit, scanning them all first would cost O(cluster) per request.
            # The full sample's worth even for an ordinary request (`limit` stops the scan
            # anyway), so its candidates are a prefix of a critical one's for the same seed.
            holders = snapshot.holders.get(request.dataset, ())
            for position in itertools.islice(
                _shuffled(holders, self._rng), self._config.sample_size
            ):
                if position not in offered:
                    offered.add(position)
                    yield position
        if not offered:
            yield from _shuffled(pool, self._rng)
            return
        for position in _shuffled(pool, self._rng):
            if position not in offered:
                yield position

    def _scan(
        self, request: model.Request, pool: Sequence[int], *, floor: float | None, limit: int
    ) -> _Pass:
        """Filter candidates until `limit` are feasible or the candidates run out.

        With `floor`, only PNodes at or above it may pass (and `pool` should be exactly
        those); the preferred candidates may still include others, rejected as such.
        """
        found = _Pass()
        feasible, reasons, rejected = found.feasible, found.reasons, found.rejected
        views = self._views
        listed = self._config.max_explained_rejections
        verdicts = self._cache.setdefault(request.shape, {})
        evaluated = 0
        for position in self._candidates(request, pool):
            evaluated += 1
            node = views[position]
            reason = verdicts.get(node.signature, _UNSET)
            if reason is _UNSET:
                reason = verdicts[node.signature] = filters.capability(request, node)
            if reason is None and request.avoid:
                reason = filters.anti_affinity(request, node)
            if reason is None and floor is not None:
                reason = filters.below_trust_floor(node, floor)
            if reason is None:
                feasible.append(position)
                if len(feasible) >= limit:
                    break
                continue
            assert isinstance(reason, str)
            reasons[reason] = reasons.get(reason, 0) + 1
            if len(rejected) < listed:
                rejected.append(explain.NodeVerdict(node.name, reason))
        found.evaluated = evaluated
        return found

    def _pick(self, request: model.Request, found: _Pass, notes: tuple[str, ...]) -> explain.Placed:
        """The best-scoring feasible PNode; ties go to the one drawn first."""
        views, static, weights = self._views, self._static, self._weights
        node_only = self._node_only
        # Per request, not per PNode: each by-request scorer, or the value it would give
        # every PNode (then it is not called).
        columns = [
            (score, None if uniform is None else uniform(request))
            for score, uniform in self._by_request
        ]
        scored: list[tuple[float, int, int, tuple[float, ...]]] = []
        for order, position in enumerate(found.feasible):
            node = views[position]
            history = static.get(position)
            if history is None:
                history = static[position] = tuple([f(request, node) for f in node_only])
            scores = (
                tuple([f(request, node) if same is None else same for f, same in columns]) + history
            )
            total = sum(map(operator.mul, weights, scores))
            scored.append((total, order, position, scores))
        # Best total first; among equals, the earliest drawn (the sort is stable).
        scored.sort(key=_by_total, reverse=True)
        listed = [
            explain.NodeVerdict(views[position].name, None, scores, total)
            for total, _, position, scores in scored[: self._config.max_explained_scores]
        ]
        best_total, _, best, _ = scored[0]
        explanation = self._explain(request, found, listed, notes)
        return explain.Placed(pnode=views[best].name, score=best_total, explanation=explanation)

    def _explain(
        self,
        request: model.Request,
        found: _Pass,
        scored: list[explain.NodeVerdict],
        notes: tuple[str, ...],
    ) -> explain.Explanation:
        return explain.Explanation(
            request=request.key,
            pnodes=len(self._snapshot),
            evaluated=found.evaluated,
            feasible=len(found.feasible),
            reasons=found.reasons,
            scorers=self._names,
            weights=self._weights,
            verdicts=(*scored, *found.rejected),
            unlisted=found.evaluated - len(scored) - len(found.rejected),
            notes=notes,
        )


def _by_total(item: tuple[float, int, int, tuple[float, ...]]) -> float:
    return item[0]
