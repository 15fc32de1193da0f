"""Placement: which PNode should host a VNode replica, and why (or why none can).

The network reconciler builds a `model.Snapshot` of PNodes and a `model.Request` per
replica slot, then calls `placement.place` or `placement.place_all`; the result is a value
(a `Plan` of `Placed` / `Unschedulable` decisions with explanations) that the reconciler
applies with conditional writes. Keeping placement a pure function is what makes a
decision reproducible (`dcnctl explain placement` can re-derive it from the same inputs and
seed) and lets two orchestrator replicas compute the same plan without coordinating.

Pure: no I/O, no clock, no global randomness. Randomness comes only from the caller's
seed. Imports `api` and the standard library, nothing else of ours.

Modules: `model` (the scheduler's own view of PNodes and requests, and converters from
`api.resources`), `config` (weights and limits), `filters` (feasibility checks),
`scorers` (normalized preferences), `explain` (decisions and their explanations),
`placement` (sampling, scoring and batch accounting).
"""
