"""Trust in PNodes: the trust book (strikes, Bugged, coalesced writes), tiebreaker replicas,
and adaptive validation (which results get double-checked).

Must not import `grpc`, services/, jobs/ or state/: it is handed what it needs.
"""
