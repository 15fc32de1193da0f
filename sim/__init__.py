"""The deterministic simulator (FoundationDB-style): the real store, view, loops, scheduler
and PNode/resolution handlers, driven by a fake clock and simulated agents, with seeded churn.

It sits above `controller` (import-linter's layers contract) and imports what it drives.
Single-threaded and reproducible: no wall clock, no threads, every choice from one seed.
It must not be imported by the product: it is a tool, like the tests.
"""
