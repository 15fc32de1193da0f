"""The soak's fault schedule: pure, drawn from one seeded `random.Random`.

The schedule says what to break, which process, for how long and how long to let the
cluster rest afterwards; `benchmarks.soak` performs it. Timing of the performing adapts to
the cluster (the next fault waits until the last one's effects have re-converged or their
bound has passed), but which faults come, in which order, against which process and with
which holds is a function of the seed alone, so a run that broke something can be replayed.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Iterator, Sequence
from typing import Literal

FaultKind = Literal["kill-agent", "stop-agent", "kill-replica", "stop-replica", "stall-store"]

#: How often each kind is drawn, relative to the others.
WEIGHTS: dict[FaultKind, int] = {
    "kill-agent": 3,
    "stop-agent": 2,
    "kill-replica": 2,
    "stop-replica": 2,
    "stall-store": 1,
}
#: Seconds a fault holds (SIGSTOP → SIGCONT; SIGKILL → restart), drawn uniformly. A stopped
#: agent sometimes outlives lease + grace (default 6 s), so both a PNode that comes back in
#: time and one that is declared Lost and fenced occur.
HOLDS: dict[FaultKind, tuple[float, float]] = {
    "kill-agent": (3.0, 15.0),
    "stop-agent": (1.0, 10.0),
    "kill-replica": (2.0, 10.0),
    "stop-replica": (2.0, 8.0),
    "stall-store": (3.0, 3.0),
}
#: Seconds of calm after a fault has re-converged (or its bound has passed).
REST = (2.0, 8.0)


@dataclasses.dataclass(frozen=True, slots=True)
class Fault:
    index: int
    kind: FaultKind
    #: The agent's or replica's name; "store" for a stall.
    target: str
    hold: float
    rest: float

    def describe(self) -> str:
        verb = {
            "kill-agent": "SIGKILL agent {t}, restart after {h:.1f} s",
            "stop-agent": "SIGSTOP agent {t} for {h:.1f} s",
            "kill-replica": "SIGKILL replica {t}, restart after {h:.1f} s",
            "stop-replica": "SIGSTOP replica {t} for {h:.1f} s",
            "stall-store": "SIGSTOP the store (moto server) for {h:.1f} s",
        }[self.kind]
        return verb.format(t=self.target, h=self.hold)


def faults(
    seed: int, *, agents: Sequence[str], replicas: Sequence[str], stall_store: bool = True
) -> Iterator[Fault]:
    """An endless schedule; the same arguments give the same faults."""
    if not agents:
        raise ValueError("faults: agents is empty; the schedule needs at least one agent")
    if not replicas:
        raise ValueError("faults: replicas is empty; the schedule needs at least one replica")
    rng = random.Random(seed)
    kinds = [k for k in WEIGHTS if stall_store or k != "stall-store"]
    # One replica alone cannot be broken without leaving nobody to fail over to.
    if len(replicas) < 2:
        kinds = [k for k in kinds if not k.endswith("-replica")]
    weights = [WEIGHTS[k] for k in kinds]
    index = 0
    while True:
        kind = rng.choices(kinds, weights=weights)[0]
        if kind.endswith("-agent"):
            target = rng.choice(list(agents))
        elif kind.endswith("-replica"):
            target = rng.choice(list(replicas))
        else:
            target = "store"
        low, high = HOLDS[kind]
        hold = round(rng.uniform(low, high), 1)
        rest = round(rng.uniform(*REST), 1)
        yield Fault(index, kind, target, hold, rest)
        index += 1
