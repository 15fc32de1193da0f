"""A model-level simulation of adaptive validation, for the frontier (`benchmarks.frontier`):
seeded, in-process, milliseconds per run, so a point can be the mean of many runs.

Real code where it decides: the check rate is `controller.trust.sampling` (this project's
scheme) or `controller.trust.adaptive` (BOINC's 1/CV rule, scaled for the sweep), and every
validation outcome goes through `controller.trust.book.apply` with the default
`TrustPolicy` (strikes in a window, Bugged). Everything else is a model, stated here:

- A fleet of `pnodes` PNodes, `liars` of them liars. A request is `results_per_request`
  VNode results, each computed by a PNode drawn uniformly from the fleet (Bugged ones get no
  work), like many small networks spread over the fleet. An answer is wrong when any of its
  results that reached the caller is a lie.
- A liar lies on a share `lie_rate` of its results. A lie is caught by the receiver's
  invariant checks (`api.checks`) with probability `detect` (0 for a slight lie, x1.01,
  which passes every check); caught, it strikes the liar and the result is recomputed (one
  extra result).
- A result is double-checked with the scheme's probability for its PNode (one extra
  result, on a second PNode). Results that disagree get tiebreaker replicas (one extra
  result each) until a value has two votes and more than any other; the losers are struck,
  the winners earn a valid result; the winning value is what the caller gets. Unchecked
  results earn nothing and are returned as they are (as in `controller.jobs.inference`).
- Colluding liars are one operator and tell identical lies on the same results (they lie
  on a result by a shared rule, so when both compute it they agree). Placement `spread`
  never puts two replicas of one result on the same operator (`scheduler.spread` where the
  operator is known: same source network, zone or join token); `random` places them
  anywhere. Non-colluding liars' lies all differ.
- `Liars.rejoin`: a Bugged liar comes back at once as a new PNode with a fresh identity (no
  history), as a volunteer with a free identity can; so the share of liars stays constant
  and the wrong-answer rate is a steady rate rather than a count that shrinks with the run.
- Compute (`World.costs`): a request is one result of each VNode of a network, each with
  its own CPU cost (`benchmarks.spot_cost`, measured); extra compute is the CPU spent on
  checking over the CPU of the primary results. Without costs every result costs 1 (a
  count). A replica (a double check, a tiebreaker, a recomputation after an invariant
  check) costs the VNode's compute. With `spot` (ours only: BOINC keeps full replicas, as
  BOINC does), the first check of a VNode whose spot check pays (`VNodeCost.check` below
  its compute) costs that check instead; if the result it checks is a lie, the check fails
  and the checker also recomputes (compute), so the lie ends in the same vote as with a
  replica. A liar as checker votes as it would as a replica (it may relay or invent a lie).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import random
from collections.abc import Callable

from api.resources import pnode
from controller.trust import adaptive, book, sampling

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
TRUST = book.TrustPolicy()

#: The check probability of a result of a PNode with this trust.
Scheme = Callable[[pnode.Trust], float]


def ours(floor: float, *, warmup: int = sampling.DEFAULT.warmup) -> Scheme:
    policy = sampling.SamplingPolicy(floor=floor, warmup=warmup)

    def probability(trust: pnode.Trust) -> float:
        return sampling.rate(trust, policy).probability

    return probability


def boinc(min_valid: int = adaptive.ADAPTIVE_MIN_VALID, *, scale: float = 1.0) -> Scheme:
    """BOINC's rule (`adaptive.double_check_probability`): always below `min_valid`
    consecutive valid results, then 1/CV; swept by `min_valid` (10: BOINC's default) or by
    `scale`, a factor on 1/CV (1: BOINC's)."""

    def probability(trust: pnode.Trust) -> float:
        p = adaptive.double_check_probability(trust.consecutive_valid, min_valid=min_valid)
        return min(1.0, scale * p)

    return probability


@dataclasses.dataclass(frozen=True, slots=True)
class Liars:
    name: str
    lie_rate: float
    #: Probability that the receiver's invariant checks catch one lie.
    detect: float = 0.0
    colluding: bool = False
    placement: str = "spread"
    #: Results a liar computes honestly before its first lie (patient: it earns trust first).
    patience: int = 0
    #: A Bugged liar comes back at once as a new PNode (a fresh identity, no history).
    rejoin: bool = False


@dataclasses.dataclass(frozen=True, slots=True)
class VNodeCost:
    """One VNode's CPU per result: computing it, and the checker's share of a spot check
    (equal to `compute` where a replica recomputes instead)."""

    name: str
    compute: float
    check: float
    #: The measured spot check of its kind, whether or not it pays (0: the kind has none).
    spot_check: float = 0.0


@dataclasses.dataclass(frozen=True, slots=True)
class World:
    pnodes: int = 10
    liars: int = 2
    requests: int = 2000
    results_per_request: int = 4
    #: Valid results each honest PNode has at the start (0: a new fleet).
    honest_history: int = 0
    #: The network's VNodes, one result each per request (then `results_per_request` is
    #: their number); empty: `results_per_request` results costing 1 each.
    costs: tuple[VNodeCost, ...] = ()

    def results(self) -> tuple[VNodeCost, ...]:
        if self.costs:
            return self.costs
        return tuple(VNodeCost(f"r{i}", 1.0, 1.0) for i in range(self.results_per_request))


@dataclasses.dataclass(slots=True)
class _Node:
    operator: int
    liar: bool
    trust: pnode.Trust = dataclasses.field(default_factory=pnode.Trust)
    lies: int = 0
    computed: int = 0
    bugged: bool = False


@dataclasses.dataclass(frozen=True, slots=True)
class Run:
    extra: float
    wrong: float
    lies: int
    honest_strikes: int
    #: Lies each Bugged liar identity told before it was Bugged.
    lies_before_bugged: tuple[int, ...]
    #: Lies told by liar identities still not Bugged at the end.
    lies_unbugged: tuple[int, ...]


def simulate(
    scheme: Scheme, liars: Liars, world: World, seed: int, *, spot: bool = False
) -> Run:
    """One seeded run; `spot`: a VNode's first check is its spot check where that costs
    less than its compute (module docstring)."""
    rng = random.Random(seed)
    results = world.results()
    nodes: list[_Node] = []
    for i in range(world.pnodes):
        liar = i < world.liars
        operator = 0 if liar and liars.colluding else i + 1
        node = _Node(operator=operator, liar=liar)
        if not liar and world.honest_history:
            h = world.honest_history
            node.trust = pnode.Trust(consecutive_valid=h, valid_total=h, window="V" * 50)
        nodes.append(node)
    primary_cost = extra = 0.0
    wrong_answers = lies = honest_strikes = 0
    bugged_after: list[int] = []
    next_lie = 0  # lie values: distinct ints; 0 is the truth
    for _ in range(world.requests):
        outcomes: dict[int, list[book.Outcome]] = {}
        wrong = False
        for result in results:
            active = [i for i, n in enumerate(nodes) if not n.bugged]
            p = rng.choice(active)
            primary_cost += result.compute
            shared = rng.random() < liars.lie_rate  # the colluders' shared rule
            value, next_lie = _value(nodes[p], liars, rng, shared, next_lie)
            if value:
                lies += 1
                nodes[p].lies += 1
                if rng.random() < liars.detect:
                    outcomes.setdefault(p, []).append(book.Outcome(False, check="invariant"))
                    extra += result.compute  # recomputed elsewhere
                    continue
            if rng.random() >= scheme(nodes[p].trust):
                wrong |= value != 0
                continue
            votes = {p: value}
            while True:
                q = _replica(nodes, active, votes, liars, rng)
                if q is None:  # nowhere left to compare: returned as is
                    wrong |= value != 0
                    break
                if spot and len(votes) == 1 and result.check < result.compute:
                    # The checker's proof, and its recomputation when the proof fails.
                    extra += result.check + (result.compute if value else 0.0)
                else:
                    extra += result.compute
                votes[q], next_lie = _value(nodes[q], liars, rng, shared, next_lie)
                if votes[q]:
                    lies += 1
                    nodes[q].lies += 1
                winner = _majority(list(votes.values()))
                if winner is None:
                    continue
                for who, said in votes.items():
                    outcomes.setdefault(who, []).append(book.Outcome(said == winner))
                wrong |= winner != 0
                break
        wrong_answers += wrong
        for who, found in outcomes.items():
            node = nodes[who]
            if not node.liar:
                honest_strikes += sum(not o.valid for o in found)
            applied = book.apply(node.trust, found, TRUST, T0)
            node.trust = applied.trust
            if applied.became_bugged:
                node.bugged = True
                if node.liar:
                    bugged_after.append(node.lies)
                    if liars.rejoin:
                        nodes.append(_Node(operator=node.operator, liar=True))
    return Run(
        extra=extra / primary_cost,
        wrong=wrong_answers / world.requests,
        lies=lies,
        honest_strikes=honest_strikes,
        lies_before_bugged=tuple(bugged_after),
        lies_unbugged=tuple(n.lies for n in nodes if n.liar and not n.bugged),
    )


def _value(
    node: _Node, liars: Liars, rng: random.Random, shared: bool, next_lie: int
) -> tuple[int, int]:
    """What `node` computes for this result (0: the truth), and the next free lie value."""
    node.computed += 1
    if not node.liar or node.computed <= liars.patience:
        return 0, next_lie
    if liars.colluding:
        return (1 if shared else 0), next_lie  # one identical lie
    if rng.random() < liars.lie_rate:
        return next_lie + 2, next_lie + 1
    return 0, next_lie


def _replica(
    nodes: list[_Node], active: list[int], votes: dict[int, int], liars: Liars,
    rng: random.Random,
) -> int | None:  # fmt: skip
    used = {nodes[v].operator for v in votes}
    if liars.placement == "spread":
        free = [i for i in active if i not in votes and nodes[i].operator not in used]
    else:
        free = [i for i in active if i not in votes]
    return rng.choice(free) if free else None


def _majority(values: list[int]) -> int | None:
    counts: dict[int, int] = {}
    for v in values:
        counts[v] = counts.get(v, 0) + 1
    ranked = sorted(counts.items(), key=lambda kv: -kv[1])
    if ranked[0][1] >= 2 and (len(ranked) == 1 or ranked[0][1] > ranked[1][1]):
        return ranked[0][0]
    return None
