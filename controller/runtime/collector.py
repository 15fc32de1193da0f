"""The cyclic garbage collector's thresholds for an orchestrator process.

An orchestrator holds every record its informers listed for as long as it runs: 10,000
PNodes and their allocations are millions of Python objects. CPython's defaults
(700, 10, 10) collect the youngest generation every 700 net allocations and the oldest,
which walks every one of those records, every hundred young collections (once long-lived
objects grew by a quarter). A 1,000-VNode placement pass allocates hundreds of thousands
of short-lived objects, so it kept paying for walks of the whole informer: at 10,000 PNodes
the collector was about 40 % of the process's CPU per VNode placed (issue 13: 420-435 us
per VNode with the defaults, 250 with (50,000, 20, 10), 239 with the collector off; one
process, same code, same machine, minutes apart).

`THRESHOLDS` keeps every generation collected and considers a full collection as rarely as
(50,000, 20, 10) did, every 2,000 x 5 x 1,000 = 10 million net allocations (and then only
once long-lived objects grew by a quarter), but keeps the young generations small. A young
collection holds the event loop for as long as it walks the young objects, and grpc.aio
leaves six objects in a reference cycle per call served (its per-call handler lookup; a
bare grpc.aio server does the same), so at thousands of calls/s the young generation is
mostly those: with a young collection every 50,000 net allocations each one held the loop
for 25-85 ms of CPU every few seconds, the largest stall in the `ingest` scenario's Resolve
tail (issue 13, measured with a per-callback probe); with 2,000 (and the middle generation
every 5 of those) no collection took more than ~5 ms of CPU. Placement did not pay for it:
CPU per VNode placed at 10,000 PNodes 0.201 and 0.175 ms against 0.205 and 0.254 with
(50,000, 20, 10), alternated in one process on a shared machine. Reference counting still
frees everything that is not in a cycle at once.

Process-wide, so only the orchestrator's entry point applies it (`dcnr-orchestrator serve`
and `up`), never a library or a test process; a benchmark that measures the loop as served
applies it for its measurement and restores the previous thresholds after.
"""

from __future__ import annotations

import gc

#: (generation 0, generation 1, generation 2) thresholds; see the module docstring.
THRESHOLDS = (2_000, 5, 1_000)


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
