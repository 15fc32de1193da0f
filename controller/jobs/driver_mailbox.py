"""What one position of one run waits for, and how a sink's replicas are compared there.

Pure bookkeeping (no I/O): controller.jobs.driver_inbox files messages into a Mailbox and does
the striking; the run reads what was decided.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Hashable
from typing import Any

import numpy as np

from api import quorum
from api.dcnr.v1 import common_pb2
from controller.runtime import signal as signal_mod

#: A training step, an inference request id, or a part of a step cut into micro-batches:
#: (step, part).
Position = int | str | tuple[int, int]


@dataclasses.dataclass(frozen=True, slots=True)
class Result:
    """One sink replica's output as it arrived: who computed it, and the value."""

    pnode: str
    tensor: common_pb2.Tensor
    array: np.ndarray[Any, Any]
    #: It failed its checks (its PNode is struck already): it agrees with nothing.
    refused: bool = False
    #: The epoch of the sender slot it came from (-1: not known), so a disputed output can
    #: be judged against a later majority of the same slot (`controller.trust.disputes`).
    epoch: int = -1


@dataclasses.dataclass(eq=False)
class Mailbox:
    """What one position of one run waits for: a Forward from every replica of every sink
    and, when training, a Backward from every replica of every source.

    Each sink's replicas are compared once all of them arrived (`api.quorum`): the
    majority's output is the sink's (`outputs`), the PNodes outside it are `struck`; no
    majority is a dispute (`disputed`, and `failed`: the position cannot complete)."""

    job: str
    network: str
    attempt: int
    position: Position
    #: sink → replicas whose output is awaited.
    sinks: dict[str, int]
    #: source → replicas whose Backward is awaited.
    sources: dict[str, int]
    #: sink → sender_replica → its output.
    results: dict[str, dict[int, Result]] = dataclasses.field(default_factory=dict)
    #: sink → its accepted output.
    outputs: dict[str, common_pb2.Tensor] = dataclasses.field(default_factory=dict)
    done: set[tuple[str, int]] = dataclasses.field(default_factory=set)
    #: Why the position cannot complete (a check failed, a dispute): the run rolls back.
    failed: str | None = None
    #: The VNode whose replicas disagreed with no majority: it needs a tiebreaker.
    disputed: str | None = None
    #: PNodes that produced a result outside its majority at this position.
    struck: set[str] = dataclasses.field(default_factory=set)
    #: A VNode could not compute the position (an agent's `compute_failure`): which, where,
    #: and the kind's error. Also `failed`; an inference ends with it instead of retrying.
    compute_failed: str | None = None
    #: Bumped on every arrival; bounded waits on it time out on the inbox's clock.
    changed: signal_mod.Signal = dataclasses.field(kw_only=True)

    @property
    def complete(self) -> bool:
        return len(self.outputs) == len(self.sinks) and len(self.done) == sum(self.sources.values())

    def missing(self) -> list[str]:
        """What has not arrived, for timeout messages: "loss (forward)", "x.1 (backward)"."""
        forward = [
            f"{_replica(s, r, n)} (forward)"
            for s, n in sorted(self.sinks.items())
            for r in range(n)
            if r not in self.results.get(s, {})
        ]
        backward = [
            f"{_replica(s, r, n)} (backward)"
            for s, n in sorted(self.sources.items())
            for r in range(n)
            if (s, r) not in self.done
        ]
        return forward + backward

    def fail(self, why: str, *, disputed: str | None = None) -> None:
        if self.failed is None:
            self.failed = why
            self.disputed = disputed
            self.changed.bump()

    def compute_fail(self, why: str) -> bool:
        """A VNode reported that it could not compute the position; False when one already
        did (the first is the one reported to the caller)."""
        if self.compute_failed is not None:
            return False
        self.compute_failed = why
        self.fail(why)
        self.changed.bump()
        return True

    def decide(self, sink: str) -> quorum.Decision:
        """Compare the sink's replicas (all arrived) and record what was decided."""
        arrived = self.results[sink]
        decision = quorum.decide(
            {r: comparable(result.array) for r, result in arrived.items() if not result.refused},
            expected=self.sinks[sink],
        )
        if decision.verdict is quorum.Verdict.PENDING:  # all arrived: the refused count against
            decision = quorum.Decision(quorum.Verdict.DISPUTED)
        if decision.verdict is quorum.Verdict.ACCEPTED:
            winners = [index(r) for r in decision.winners]
            self.outputs[sink] = arrived[min(winners)].tensor
            self.struck.update(arrived[index(r)].pnode for r in decision.losers)
            self.struck.update(result.pnode for result in arrived.values() if result.refused)
        elif decision.verdict is quorum.Verdict.DISPUTED:
            held = ", ".join(f"{sink}.{r} on {arrived[r].pnode}" for r in sorted(arrived))
            self.fail(
                f"the {len(arrived)} replicas of sink {sink} disagree with no majority ({held}); "
                "a tiebreaker replica is requested",
                disputed=sink,
            )
        return decision


def comparable(array: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    """What `api.quorum` compares for a sink output: a float array with its NaN positions
    beside it, so [loss, NaN accuracy] (mse, plugin losses) from two replicas agrees, and a
    NaN where the majority has a number does not (`quorum.agree` never agrees on NaN)."""
    if not np.issubdtype(array.dtype, np.floating):
        return array
    missing = np.isnan(array)
    return np.stack([np.where(missing, 0.0, array), missing.astype(array.dtype)])


def index(producer: Hashable) -> int:
    assert isinstance(producer, int)
    return producer


def _replica(vnode: str, replica: int, count: int) -> str:
    return vnode if count == 1 else f"{vnode}.{replica}"
