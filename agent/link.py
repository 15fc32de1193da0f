"""The agent's link to the orchestrator side: how long to wait after a failure, and whether
we are connected, as one state that is logged when it changes and not on every retry.

`Backoff` is capped exponential backoff with full jitter: after the n-th failure in a row a
loop waits a uniformly random time in [0, min(cap, first * 2**(n-1))], so agents that lost
the same replica at the same moment do not all come back in step. Randomness is passed in.

`Link` is the state machine every control loop reports to:

    connected --(a call fails)--> lost --(fail-over to X)--> reconnecting to X
        ^                                                            |
        +-------------------(a call is answered)--------------------+

One log line per transition: "lost" when the first call fails, "reconnecting to X" the
first time each address is tried while disconnected (rotating back and forth over dead
replicas says nothing new), "connected" when an answer comes back. At start-up, before
anything answered, the first failure says "not answering" instead of "lost". Retries in between log
at debug level only.
"""

from __future__ import annotations

import enum
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field

log = logging.getLogger("dcnr.agent.link")


@dataclass
class Backoff:
    """Capped exponential backoff with full jitter."""

    first: float
    cap: float
    rng: random.Random = field(default_factory=random.Random)

    def __post_init__(self) -> None:
        if not 0 < self.first <= self.cap:
            raise ValueError(f"backoff: first={self.first} must be > 0 and <= cap={self.cap}")

    def ceiling(self, failures: int, *, cap: float | None = None) -> float:
        """The longest wait after `failures` failures in a row (`cap` lowers the cap)."""
        limit = self.cap if cap is None else min(self.cap, cap)
        return min(limit, self.first * 2.0 ** min(max(failures, 1) - 1, 30))

    def delay(self, failures: int, *, cap: float | None = None) -> float:
        return self.rng.uniform(0.0, self.ceiling(failures, cap=cap))


class State(enum.Enum):
    CONNECTED = "connected"
    LOST = "lost"
    RECONNECTING = "reconnecting"


class Link:
    """Whether the orchestrator side answers us, fed by every call the agent makes to it."""

    def __init__(
        self,
        address: str,
        *,
        clock: Callable[[], float] = time.monotonic,
        on_change: Callable[[State], None] | None = None,
    ) -> None:
        """`address`: the orchestrator we start with; `on_change(state)`: each transition
        (for `agent.metrics`)."""
        self.state = State.RECONNECTING  # nothing answered yet
        self.address = address
        self._clock = clock
        self._on_change = on_change or (lambda _state: None)
        self._since = clock()
        self._tried: set[str] = {address}
        self.transitions = 0
        self._said_unreachable = False

    def _move(self, state: State) -> None:
        self.state = state
        self.transitions += 1
        self._on_change(state)

    def answered(self) -> None:
        """A call was answered (any answer: a refusal is an answer too)."""
        if self.state is State.CONNECTED:
            return
        first = self.transitions == 0
        down = self._clock() - self._since
        self._move(State.CONNECTED)
        self._tried = {self.address}
        if first:
            log.info("connected to orchestrator %s", self.address)
        else:
            log.warning("connected to orchestrator %s again after %.1fs", self.address, down)

    def failed(self, what: str, cause: str) -> None:
        """A call got no answer (`what`: which, `cause`: the status code or error)."""
        if self.state is not State.CONNECTED:
            if self.transitions == 0 and not self._said_unreachable:
                self._said_unreachable = True  # at start-up: nothing was connected to lose
                log.warning("orchestrator %s not answering: %s failed with %s", self.address,
                            what, cause)  # fmt: skip
                return
            log.debug("%s to orchestrator %s failed again: %s", what, self.address, cause)
            return
        self._since = self._clock()
        self._move(State.LOST)
        log.warning("lost orchestrator %s: %s failed with %s", self.address, what, cause)

    def moved(self, address: str) -> None:
        """The agent moved to `address` (the next of --orchestrator, or the same again)."""
        self.address = address
        if self.state is State.CONNECTED:
            self._since = self._clock()
        new = address not in self._tried
        self._tried.add(address)
        if self.state is not State.RECONNECTING:
            self._move(State.RECONNECTING)
        elif not new:
            log.debug("reconnecting to orchestrator %s again", address)
            return
        log.warning("reconnecting to orchestrator %s", address)
