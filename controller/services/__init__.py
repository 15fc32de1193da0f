"""The gRPC boundary: dcnr.v1 servicers, wire conversion, authentication, call timing, the
driver's transport to agents (`vnode_transport`), the service catalog with health and
reflection (`catalog`), listen and advertise addresses (`addresses`), and the one place
where domain errors (`controller.errors`, `store.errors`) become status codes (`rpc`).

May import every room below it (jobs, trust, state, runtime) and `grpc`. Holds no policy of
its own beyond checking and converting what crosses the wire: decisions live below.
"""
