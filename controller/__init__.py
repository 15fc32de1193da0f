"""The orchestrator process: it coordinates; it never computes a VNode.

controller/ is divided into rooms, each a sub-package with one concern, layered top to
bottom (import-linter enforces it: `make layers`):

    main, up        command line: `serve`, `up`, `init-store`
    server          the composition root: builds every part and wires them; no policy
    services/       the gRPC boundary: servicers, wire conversion, auth, the one error mapping
    jobs/           training and inference: the driver, its inbox, checkpoints, model state
    metrics         Prometheus metrics (counters are sinks the lower rooms are handed)
    trust/ state/   the trust book and tiebreaks | the in-memory view, leases, registry
    runtime/        manager, work queue, clock, replica membership, event routing
    errors config   domain errors, timings and limits (the log format is api.logs)

Only services/ (and the process around it: server, main, up) speaks gRPC; every room below
raises `controller.errors` and is mapped to status codes in one place
(`controller.services.rpc`).
"""
