"""Running the loops: the manager and its work queue, the clock (real or fake), signals
that wait on it, replica membership, event routing (which record changes wake which
loop) and the event recorder (Event records for people, written off the hot path).
Conflict retries are the store's (`store.retry.retry_on_conflict`), shared with the
reconcilers.

Must not import `grpc` or any other room of controller/ except errors and config.
"""
