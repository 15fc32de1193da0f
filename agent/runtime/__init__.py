"""The VNode runtime: the math one hosted VNode performs, on numpy, with no I/O of its own.

Pure: no gRPC, no asyncio, no clocks. The only I/O is `data` reading the arrays an `input`
VNode serves. The agent process wraps this in the data plane; `reference` runs the same
kinds over a whole Network in one process, so tests and benchmarks can check the
distributed run against exactly the math it should have done.

    errors     KindError (bad params, bad inputs) and its DataError, StateError
    kinds      the Kind contract, the registry (built-ins + entry points "dcnr.vnode_kinds")
    layers     built-in kinds: input, dense, relu, tanh, sigmoid, add, concat
    losses     built-in kinds: softmax_cross_entropy, mse
    optim      sgd, momentum, adam — each VNode updates its own parameters
    state      deterministic initial randomness; params + optimizer state to and from bytes
    data       DataSource: .npz/.npy arrays from file:// or s3://, cached
    reference  a single-process runner of a Network with the same kinds
"""
