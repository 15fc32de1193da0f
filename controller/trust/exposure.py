"""Inference answers returned with a PNode's result unchecked, kept so that when the PNode is
caught they can be named.

Under `validation: adaptive` most answers go back to the caller with some VNodes computed by
one PNode alone (`controller.trust.sampling`). Those answers cannot be called back, and the
inputs are not kept, so they cannot be re-computed either; but once the PNode is Bugged
(proven to lie), every one of them may hold one of its lies. The driver records each such
answer here (`returned`), and the Bugged transition takes them (`take`): an event on the
PNode names their request ids and `dcnr_inference_answers_exposed_total` counts them, so
whoever keeps answers by request id can find the ones to distrust.

Bounded: the last `limit` answers per PNode (older ones are counted, not named), and one
replica's memory only: answers another orchestrator replica returned are its own to report,
and a restart forgets them (like the trust book's unwritten outcomes).
"""

from __future__ import annotations

import collections
import dataclasses
from datetime import datetime

#: Answers named per PNode; older ones are only counted. 200 for each of 10,000 PNodes is the most
#: this holds, about 2 million small records.
DEFAULT_LIMIT = 200
#: Request ids listed in one event; the rest are counted.
LISTED = 20


@dataclasses.dataclass(frozen=True, slots=True)
class Unchecked:
    network: str
    request_id: str
    vnode: str
    at: datetime


@dataclasses.dataclass(frozen=True, slots=True)
class Exposed:
    """What a caught PNode's unchecked answers were: the last ones, and how many in all."""

    pnode: str
    answers: tuple[Unchecked, ...]
    total: int

    def message(self) -> str:
        """One line for people: how many, and the first request ids by network."""
        by_network: dict[str, list[str]] = {}
        for a in self.answers[:LISTED]:
            ids = by_network.setdefault(a.network, [])
            if a.request_id not in ids:
                ids.append(a.request_id)
        listed = "; ".join(f"{net}: {', '.join(ids)}" for net, ids in sorted(by_network.items()))
        more = self.total - min(len(self.answers), LISTED)
        tail = f" and {more} more" if more > 0 else ""
        return (
            f"{self.total} inference answers were returned with its results unchecked and may "
            f"hold its lies (request ids {listed}{tail})"
        )


class Exposure:
    def __init__(self, *, limit: int = DEFAULT_LIMIT) -> None:
        if limit < 1:
            raise ValueError(f"exposure: limit: {limit!r} must be at least 1")
        self._limit = limit
        self._answers: dict[str, collections.deque[Unchecked]] = {}
        self._counts: dict[str, int] = {}

    def returned(self, pnode: str, answer: Unchecked) -> None:
        """`answer` went to its caller with `pnode`'s result for `answer.vnode` unchecked."""
        kept = self._answers.get(pnode)
        if kept is None:
            kept = self._answers[pnode] = collections.deque(maxlen=self._limit)
        kept.append(answer)
        self._counts[pnode] = self._counts.get(pnode, 0) + 1

    def take(self, pnode: str) -> Exposed | None:
        """The unchecked answers of `pnode`, forgotten here (None: there were none)."""
        kept = self._answers.pop(pnode, None)
        total = self._counts.pop(pnode, 0)
        if not kept:
            return None
        return Exposed(pnode, tuple(kept), total)
