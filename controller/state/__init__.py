"""What this replica knows and keeps of cluster state: the in-memory view (`view`, which
composes the record cache with its indexes, liveness, and change notification), the one
store of unpersisted lease renewals and the keeper that persists them, the PNode registry,
allocation status, credentials.

Must not import `grpc`, services/, jobs/ or trust/: domain errors only (`controller.errors`).
"""
