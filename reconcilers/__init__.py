"""The reconcile loops: PNode lifecycle, network placement, jobs.

Each loop implements one contract, `reconcile(key) -> Result` (see `reconcilers.base`). The
key names a record and carries no event data, so a loop re-reads desired and actual state
every time and is correct however often, and on however many replicas, it runs. Inside, a
loop is a pure `compute()` that turns the state it read into a plan, and a small `apply()`
that writes the plan with conditional writes.

What a loop must not do: sleep, loop until something converges, or retry. It returns (or
raises) and says when to look again; all retry policy — backoff after errors, timers for
`requeue_after`, giving up on terminal errors — lives in one place, `controller.runtime.manager`.
This package imports `scheduler`, `store` and `api`, never `controller`.
"""
