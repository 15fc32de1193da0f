"""The orchestrator process: gRPC shim, reconcile manager, metrics, configuration, main.

The top layer: it wires the store, the loops and the API together and owns every side
effect of running (sockets, signals, threads). It coordinates; it never computes a VNode.
"""
