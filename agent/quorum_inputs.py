"""Results of one position from every replica of each neighbour, and the quorum over them.

A replica of C does not take the first result a parent's replica sends: it keeps one per
sender replica and decides per neighbour with `api.quorum.decide`, out of the number of
replicas that neighbour runs (or more, once a tiebreaker replica has answered). Only the
accepted array is ever consumed. What the comparison found out about the producers
(`Finding`: a loser, or a dispute no majority settles) is returned for the agent to report;
the orchestrator strikes losers and places a tiebreaker for a dispute. Pure: no I/O.

The same bookkeeping serves gradients in backward (per child), where the empty "no gradient"
marker is a result like any other: it agrees only with another empty one.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from typing import cast

import numpy as np

from api import quorum
from api.dcnr.v1 import common_pb2

#: ("step", 5), ("request", "r-1"), or a part of a step cut into micro-batches: ("step", 5, 2).
Position = tuple[str, int | str] | tuple[str, int, int]
#: What an empty "no gradient" / "no input" tensor is compared as.
EMPTY = np.zeros((0,), dtype=np.float32)


@dataclasses.dataclass(frozen=True)
class Finding:
    """A quorum outcome to report about a producer of a result this replica received."""

    job: str
    position: Position
    #: True: forward results (activations) of a parent; False: gradients of a child.
    forward: bool
    #: True: no majority among the replicas of `subject_vnode` (nobody to blame yet);
    #: False: `subject_replica` lost to the majority.
    disputed: bool
    subject_vnode: str
    subject_replica: int
    subject_epoch: int
    message: str
    #: The signed results of the replicas compared, as received (those that carried one):
    #: the proof the orchestrator checks (ReportResultRequest.evidence).
    evidence: tuple[common_pb2.SignedMessage, ...] = ()


@dataclasses.dataclass
class _Neighbour:
    results: dict[int, np.ndarray] = dataclasses.field(default_factory=dict)
    epochs: dict[int, int] = dataclasses.field(default_factory=dict)
    signed: dict[int, common_pb2.SignedMessage] = dataclasses.field(default_factory=dict)
    accepted: np.ndarray | None = None
    winners: tuple[int, ...] = ()
    disputed: bool = False

    def copy(self) -> _Neighbour:
        return dataclasses.replace(
            self, results=dict(self.results), epochs=dict(self.epochs), signed=dict(self.signed)
        )


class Inputs:
    """The results of one phase at one position, per neighbour VNode and sender replica."""

    def __init__(self, job: str, position: Position, *, forward: bool) -> None:
        self.job = job
        self.position = position
        self.forward = forward
        self._by_name: dict[str, _Neighbour] = {}

    def add(
        self,
        name: str,
        replica: int,
        epoch: int,
        array: np.ndarray,
        *,
        expected: int,
        evidence: common_pb2.SignedMessage | None = None,
    ) -> list[Finding]:
        """Record `name` replica `replica`'s result (out of `expected` replicas) and decide
        again; returns what there is to report because of it. `evidence`: the signed request
        that carried it, for the reports."""
        n = self._by_name.setdefault(name, _Neighbour())
        n.results[replica] = array
        n.epochs[replica] = epoch
        if evidence is not None:
            n.signed[replica] = evidence
        else:
            n.signed.pop(replica, None)
        if n.accepted is not None:  # decided already: the late result is only compared
            if quorum.agree(n.accepted, array):
                return []
            return [
                self._loser(name, n, replica, f"the accepted result of replicas {_list(n.winners)}")
            ]
        total = max(expected, len(n.results))
        decision = quorum.decide(n.results, expected=total)
        if decision.verdict is quorum.Verdict.ACCEPTED:
            assert decision.accepted is not None
            n.accepted = decision.accepted
            n.winners = tuple(sorted(cast(int, w) for w in decision.winners))
            majority = f"the majority, replicas {_list(n.winners)} of {total}"
            return [self._loser(name, n, cast(int, r), majority) for r in decision.losers]
        if decision.verdict is quorum.Verdict.DISPUTED and not n.disputed:
            n.disputed = True
            return [
                Finding(
                    self.job,
                    self.position,
                    self.forward,
                    disputed=True,
                    subject_vnode=name,
                    subject_replica=0,
                    subject_epoch=n.epochs.get(0, next(iter(n.epochs.values()))),
                    message=(
                        f"quorum: the {self._what()} of {name!r} replicas "
                        f"{_list(sorted(n.results))} disagree with no majority of {total}; "
                        "a tiebreaker replica must settle it"
                    ),
                    evidence=_signed(n),
                )
            ]
        return []

    def accepted(self, name: str) -> np.ndarray | None:
        n = self._by_name.get(name)
        return n.accepted if n is not None else None

    def arrays(self, names: Iterable[str]) -> list[np.ndarray]:
        """The accepted results of `names`, in that order (each must be `complete`)."""
        found = [self.accepted(name) for name in names]
        if any(a is None for a in found):
            raise ValueError("arrays: a neighbour has no accepted result yet")
        return [a for a in found if a is not None]

    def complete(self, names: Iterable[str]) -> bool:
        """Whether every neighbour in `names` has an accepted result."""
        return all(self.accepted(name) is not None for name in names)

    def settled(self, expected: Mapping[str, int]) -> bool:
        """Whether every replica expected has answered (no late result left to compare)."""
        return all(
            len(self._by_name[name].results) >= count if name in self._by_name else count <= 0
            for name, count in expected.items()
        )

    def save(self, name: str) -> _Neighbour | None:
        """What `load` puts back when the result just added cannot be used after all."""
        n = self._by_name.get(name)
        return n.copy() if n is not None else None

    def load(self, name: str, saved: _Neighbour | None) -> None:
        if saved is None:
            self._by_name.pop(name, None)
        else:
            self._by_name[name] = saved

    def _what(self) -> str:
        return "forward results" if self.forward else "gradients"

    def _loser(self, name: str, n: _Neighbour, replica: int, majority: str) -> Finding:
        mine, accepted = n.results[replica], n.accepted
        assert accepted is not None
        if mine.shape == accepted.shape and mine.size:
            difference = float(
                np.max(np.abs(mine.astype(np.float64) - accepted.astype(np.float64)))
            )
            how = f"differs by up to {difference:.3g} from"
        else:
            how = f"(shape {list(mine.shape)}) disagrees with"
        return Finding(
            self.job,
            self.position,
            self.forward,
            disputed=False,
            subject_vnode=name,
            subject_replica=replica,
            subject_epoch=n.epochs[replica],
            message=(
                f"quorum: the {self._what()[:-1]} of {name!r} replica {replica} {how} {majority}"
            ),
            evidence=_signed(n),
        )


def _signed(n: _Neighbour) -> tuple[common_pb2.SignedMessage, ...]:
    """Every replica's signed result, in replica order: the loser's and the majority's
    both, since the orchestrator compares them itself."""
    return tuple(n.signed[r] for r in sorted(n.signed))


def _list(replicas: Iterable[int]) -> str:
    return ", ".join(str(r) for r in replicas)
