"""Running the loops: the manager and its work queue, the clock (real or fake), signals
that wait on it, replica membership, conflict retries and event routing (which record
changes wake which loop).

Must not import `grpc` or any other room of controller/ except errors and config.
"""
