"""What this replica knows and keeps of cluster state: the in-memory view (records,
indexes, liveness), lease renewals, the PNode registry, allocation status, credentials.

Must not import `grpc`, services/, jobs/ or trust/: domain errors only (`controller.errors`).
"""
