"""The PNode side: the `dcnr-agent` process and the VNode runtime it hosts.

An agent is a client of the dcnr.v1 protocol and nothing more: it imports `api` and no other
package of ours (an import-linter contract enforces it), exactly as a third-party agent in
another language would be written against the .proto files alone.

    runtime   pure VNode math on numpy: kinds, optimizers, state, data sources, a reference
    (the agent process, its data plane and peers live beside it)
"""
