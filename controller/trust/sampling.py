"""Which results of a PNode get double-checked under `validation: adaptive`: a rate per
PNode, from its own validation history, with a floor. Pure: the trust record and a seeded
`random.Random` are handed in.

BOINC's adaptive replication (`controller.trust.adaptive`, kept for the frontier benchmark)
checks a host with probability 1/CV, CV its consecutive valid results: the longer a host
has been right, the less it is checked, towards zero. That assumes hosts that are either
reliable or broken. A liar that lies on a few of its results earns trust between lies and
is then seldom checked, so most of its lies are never compared. Here instead (the rules,
first match decides):

    rule        when                                               rate
    ----------  -------------------------------------------------  -------------
    suspect     a strike among its last `memory` outcomes, or one   1 (every result)
                this replica holds unwritten
    warm-up     fewer than `warmup` valid results in all            1 (every result)
    floor       otherwise                                          `floor`

Why each rule:
- floor: a PNode is checked at a fixed rate however long it has been right, so a liar's
  lie is compared with probability `floor` however patient it is; its expected number of
  unchecked lies before its first caught one is (1 - floor) / floor, whatever its lie rate.
- suspect: a strike is proof (signed results, `controller.trust.evidence`) that the PNode
  lied once; honest PNodes are never struck, since comparisons are deterministic. So once
  caught, a PNode is checked on every result until the strike leaves its window: its further
  lies are all caught (none reaches a caller) and it reaches `strike_limit` (Bugged) within
  as few lies as the trust policy allows, instead of being sampled again at the floor.
- warm-up: a new PNode (or a liar back under a new identity) has no history to judge.

The cost on honest PNodes is the floor: extra compute about `floor` of the primary results
once the fleet is warm. `benchmarks/frontier.py` sweeps it against BOINC's rule.
"""

from __future__ import annotations

import dataclasses
import random
from typing import Literal

from api.resources import pnode

Reason = Literal["suspect", "warm-up", "floor"]
STRIKE = "S"


@dataclasses.dataclass(frozen=True, slots=True)
class SamplingPolicy:
    #: The least share of a PNode's results that is double-checked, however trusted.
    floor: float = 0.1
    #: Valid results a PNode needs before it is sampled at all (before: every result).
    warmup: int = 30
    #: A strike among the PNode's last `memory` outcomes makes it a suspect (checked on
    #: every result). At most the trust window (`book.TrustPolicy.window`) is remembered.
    memory: int = 50

    def __post_init__(self) -> None:
        if not 0.0 < self.floor <= 1.0:
            raise ValueError(f"sampling policy: floor: {self.floor!r} must be in (0, 1]")
        if not 0 <= self.warmup <= 1_000_000:
            raise ValueError(f"sampling policy: warmup: {self.warmup!r} must be in [0, 1000000]")
        if not 1 <= self.memory <= 1000:
            raise ValueError(f"sampling policy: memory: {self.memory!r} must be in [1, 1000]")


DEFAULT = SamplingPolicy()


@dataclasses.dataclass(frozen=True, slots=True)
class Rate:
    probability: float
    reason: Reason


def rate(trust: pnode.Trust, policy: SamplingPolicy, *, struck_unwritten: bool = False) -> Rate:
    """The probability that a result of a PNode with this `trust` is double-checked, and
    the rule that set it (module docstring). `struck_unwritten`: this replica holds a strike
    of the PNode not yet written to `trust`."""
    # Uncordon sets `strikes` to 0 and leaves the window as it was: its strikes are forgiven.
    recent = trust.strikes > 0 and STRIKE in trust.window[-policy.memory :]
    if struck_unwritten or recent:
        return Rate(1.0, "suspect")
    if trust.valid_total < policy.warmup:
        return Rate(1.0, "warm-up")
    return Rate(policy.floor, "floor")


def should_check(
    trust: pnode.Trust,
    policy: SamplingPolicy,
    rng: random.Random,
    *,
    struck_unwritten: bool = False,
) -> bool:
    p = rate(trust, policy, struck_unwritten=struck_unwritten).probability
    return p >= 1.0 or rng.random() < p
