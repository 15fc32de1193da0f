"""dcnctl: the kubectl-style command line of DCNR.

A client of the dcnr.v1 protocol and nothing more: it imports `api` (the contract, the
resource models, manifests, labels, tensors) and no other package of ours, exactly as a
third-party tool written against the .proto files would. It never reads the store.

    main        the argument parser and the one place errors become kubectl lines
    errors      CliError, and gRPC statuses translated into kubectl's wording
    config      contexts in ~/.dcnr/config and which server to talk to
    contexts    the `config` subcommands
    client      one channel, the stubs, the request header and credentials
    kinds       resource type names and aliases (networks, net, pn, vn ...), and reading them
    tables      kubectl-style tables and AGE
    render      what `get` prints for each kind and output format
    apply       `apply` and `delete`
    get         `get`, and `-w`
    describe    `describe network|pnode|job`
    admin       `cordon|uncordon|drain`, `explain placement`, `version`
    follow      `train`: the live progress of a Job
    infer       `infer`: tensors in, outputs out
    completion  `completion bash|zsh`
"""

import os

# gRPC's C core logs a failed TLS handshake at INFO on stderr, above dcnctl's own one-line
# error; a command line shows only errors unless the user asks for more (GRPC_VERBOSITY).
# Set before anything imports grpc: the package runs before any of its modules.
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
