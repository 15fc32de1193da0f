"""Token buckets, one per key, in a table of bounded size: admission and hot-call limits.

A bucket holds up to `burst` tokens and gains `rate` tokens per second; a call takes one
token or is refused. Time is passed in (a monotonic reading from `controller.runtime.clock`),
so tests drive it by hand.

Memory is bounded whatever callers do: the table holds at most `max_keys` buckets. A bucket
that has refilled to full carries no information (a fresh bucket would say the same), so it
may be dropped at any time; when the table is full, full buckets are dropped first, then the
least recently used ones, until an eighth of the table is free. Dropping a bucket that is
not full forgives its debt, so an attacker with more than `max_keys` distinct keys could get
a little more than `burst` per key; the per-key limit for anyone with fewer keys is exact.
Each `take` costs O(1) amortized: a sweep over the table happens at most once per
`max_keys / 8` insertions.
"""

from __future__ import annotations

import dataclasses
import math
from collections import OrderedDict


@dataclasses.dataclass(frozen=True, slots=True)
class Limit:
    """`rate` tokens per second, at most `burst` saved up. `rate` 0 is "no limit"."""

    rate: float
    burst: int

    def __post_init__(self) -> None:
        if not (self.rate >= 0 and math.isfinite(self.rate)):
            raise ValueError(f"rate: must be a finite number >= 0 per second, got {self.rate!r}")
        if self.burst < 1:
            raise ValueError(f"burst: must be at least 1, got {self.burst!r}")

    @property
    def unlimited(self) -> bool:
        return self.rate == 0

    def describe(self) -> str:
        return f"{self.rate:g}/s, burst {self.burst}"

    @classmethod
    def parse(cls, text: str, flag: str) -> Limit:
        """'RATE/BURST' (e.g. '5/20'), or '0' for no limit; errors name the flag."""
        try:
            if text.strip() == "0":
                return cls(0.0, 1)
            rate, sep, burst = text.partition("/")
            if not sep:
                raise ValueError("expected RATE/BURST")
            return cls(float(rate), int(burst))
        except ValueError as exc:
            raise ValueError(
                f"{flag} {text!r}: must be RATE/BURST, e.g. '5/20' (5 per second, bursts of "
                f"20), or 0 for no limit ({exc})"
            ) from None


@dataclasses.dataclass(slots=True)
class _Bucket:
    tokens: float
    at: float


class Buckets:
    """One token bucket per key, at most `max_keys` of them (see the module docstring)."""

    def __init__(self, limit: Limit, *, max_keys: int = 10_000) -> None:
        if max_keys < 1:
            raise ValueError(f"max_keys: must be at least 1, got {max_keys!r}")
        self.limit = limit
        self.max_keys = max_keys
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    def take(self, key: str, now: float) -> bool:
        """Take one token for `key` at monotonic time `now`; False: refused (over the limit)."""
        limit = self.limit
        if limit.unlimited:
            return True
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= self.max_keys:
                self._evict(now)
            bucket = self._buckets[key] = _Bucket(float(limit.burst), now)
        else:
            self._buckets.move_to_end(key)
            elapsed = max(0.0, now - bucket.at)
            bucket.tokens = min(float(limit.burst), bucket.tokens + elapsed * limit.rate)
            bucket.at = now
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return True
        return False

    def _evict(self, now: float) -> None:
        """Make room: drop every bucket that has refilled; if none has, the oldest one."""
        limit = self.limit
        full = [
            key
            for key, b in self._buckets.items()
            if b.tokens + max(0.0, now - b.at) * limit.rate >= limit.burst
        ]
        for key in full:
            del self._buckets[key]
        # Leave an eighth of the table free, so the next sweep is max_keys/8 inserts away.
        keep = self.max_keys - max(1, self.max_keys // 8)
        while len(self._buckets) > keep:
            self._buckets.popitem(last=False)  # least recently used
