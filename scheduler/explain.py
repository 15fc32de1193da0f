"""Decisions and their explanations: what was placed where, and why.

Every rejection and every score is recorded (Nomad's habit), so "why is this unschedulable"
and "why did it land there" have answers. Explanations are plain values with a `to_dict`,
because they travel to `dcnctl explain placement` over gRPC as JSON: dcnctl imports only
`api`, never this package.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, TypeAlias


@dataclasses.dataclass(frozen=True, slots=True)
class NodeVerdict:
    """One evaluated PNode: the filter it failed, or its scores if it passed them all."""

    pnode: str
    #: The first failed check (see `filters`), or None if the PNode was feasible.
    reason: str | None
    #: Per scorer, aligned with `Explanation.scorers`; empty for rejected PNodes.
    scores: tuple[float, ...] = ()
    #: Weighted mean of `scores`; None for rejected PNodes.
    total: float | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class Explanation:
    request: str
    #: PNodes in the snapshot.
    pnodes: int
    #: PNodes whose filter verdict was computed (cached verdicts included).
    evaluated: int
    #: Evaluated PNodes that passed every filter, hence were scored.
    feasible: int
    #: Rejections among the evaluated PNodes, by reason.
    reasons: Mapping[str, int]
    #: The scorers that ran (non-zero weight), and their weights normalized to sum to 1,
    #: so a verdict's total is the dot product of its scores and these weights.
    scorers: tuple[str, ...]
    weights: tuple[float, ...]
    #: The best `config.max_explained_scores` scored PNodes, best first, then the first
    #: `config.max_explained_rejections` rejected ones in the order they were drawn.
    verdicts: tuple[NodeVerdict, ...]
    #: Evaluated PNodes (scored or rejected) not listed in `verdicts`.
    unlisted: int = 0
    #: Anything the table alone would not say (a trust-floor fallback, for example).
    notes: tuple[str, ...] = ()

    def scores_of(self, verdict: NodeVerdict) -> dict[str, float]:
        return dict(zip(self.scorers, verdict.scores, strict=True))

    def to_dict(self) -> dict[str, Any]:
        return {
            "request": self.request,
            "pnodes": self.pnodes,
            "evaluated": self.evaluated,
            "feasible": self.feasible,
            "reasons": dict(sorted_reasons(self.reasons)),
            "weights": dict(zip(self.scorers, self.weights, strict=True)),
            "verdicts": [
                {
                    "pnode": v.pnode,
                    "reason": v.reason,
                    "scores": self.scores_of(v) if v.reason is None else {},
                    "total": v.total,
                }
                for v in self.verdicts
            ],
            "unlisted": self.unlisted,
            "notes": list(self.notes),
        }


@dataclasses.dataclass(frozen=True, slots=True)
class Placed:
    pnode: str
    score: float
    explanation: Explanation


@dataclasses.dataclass(frozen=True, slots=True)
class Unschedulable:
    #: Every PNode in the snapshot, counted under the first check it failed.
    reasons: dict[str, int]
    explanation: Explanation

    @property
    def message(self) -> str:
        """Kubernetes-style: "0/12 pnodes available: 7 insufficient memory, 5 lack ..."."""
        return unschedulable_message(self.explanation.pnodes, self.reasons)


Decision: TypeAlias = Placed | Unschedulable


def sorted_reasons(reasons: Mapping[str, int]) -> list[tuple[str, int]]:
    """Most common first, then alphabetical, so messages are stable and comparable."""
    return sorted(reasons.items(), key=lambda item: (-item[1], item[0]))


def unschedulable_message(pnodes: int, reasons: Mapping[str, int]) -> str:
    head = f"0/{pnodes} pnodes available"
    if not reasons:
        return f"{head}: no pnodes registered" if pnodes == 0 else head
    return f"{head}: " + ", ".join(f"{n} {reason}" for reason, n in sorted_reasons(reasons))
