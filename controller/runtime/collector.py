"""The cyclic garbage collector's thresholds for an orchestrator process.

An orchestrator holds every record its informers listed for as long as it runs: 10,000
PNodes and their allocations are millions of Python objects. CPython's defaults
(700, 10, 10) collect the youngest generation every 700 net allocations and the oldest,
which walks every one of those records, every hundred young collections (once long-lived
objects grew by a quarter). A 1,000-VNode placement pass allocates hundreds of thousands
of short-lived objects, so it kept paying for walks of the whole informer: at 10,000 PNodes
the collector was about 40 % of the process's CPU per VNode placed (issue 13: 420-435 us
per VNode with the defaults, 250 with `THRESHOLDS`, 239 with the collector off; one
process, same code, same machine, minutes apart).

`THRESHOLDS` keeps every generation collected, only less often: a young collection every
50,000 net allocations (a few MB of garbage cycles at most waiting), a full one every 200 of
those. Reference counting still frees everything that is not in a cycle at once.

Process-wide, so only the orchestrator's entry point applies it (`dcnr-orchestrator serve`
and `up`), never a library or a test process; a benchmark that measures the loop as served
applies it for its measurement and restores the previous thresholds after.
"""

from __future__ import annotations

import gc

#: (generation 0, generation 1, generation 2) thresholds; see the module docstring.
THRESHOLDS = (50_000, 20, 10)


def tune(thresholds: tuple[int, int, int] = THRESHOLDS) -> tuple[int, int, int]:
    """Apply `thresholds`; returns the previous ones (for `gc.set_threshold` to restore)."""
    for position, value in enumerate(thresholds):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(
                f"gc thresholds: generation {position} = {value!r} is invalid; "
                "must be an integer >= 1"
            )
    previous = gc.get_threshold()
    gc.set_threshold(*thresholds)
    return previous
