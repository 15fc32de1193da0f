"""The dcnr.v1 contract: protobuf definitions and generated code, resource models, manifests.

This is the bottom layer. It holds no I/O beyond parsing bytes handed to it and imports
nothing else of ours: `agent` and `dcnctl` are built on it alone, exactly as a third-party
client in another language would be built on the .proto files.
"""
