"""Training and inference runs: the driver's loop, its calls to agents, checkpoints, the
inbox where sinks deliver, the plan of a run, data sets, job watches, inference, model state.

Must not import `grpc` or `controller.services`: agents are reached through the transport
protocol it declares (`vnode_client.Transport`), implemented over gRPC in services/, and
failures are raised as `controller.errors`.
"""
