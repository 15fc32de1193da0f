"""The store's errors, our own small hierarchy; backends translate into these.

    StoreError
    ├── NotFound        the record does not exist
    ├── AlreadyExists   create of a record that exists
    ├── Conflict        resource_version differs from the one the write was conditioned on
    ├── Unavailable     retryable: throttling, timeouts, a locked database (after the
    │                   backend's own jittered retries)
    ├── InvalidRequest  the call itself is wrong (too many ops in a transaction, unknown index)
    └── Gone            a change-feed cursor the feed no longer serves (compacted, trimmed,
                        the stream replaced, or a process-local position from elsewhere):
                        list again and take a new cursor, as Kubernetes' 410 Gone

A failed transaction raises the error of the first operation whose condition failed and
sets `op_index` to its position, so callers can tell which record moved under them.
"""

from __future__ import annotations


class StoreError(Exception):
    def __init__(
        self, message: str, *, kind: str = "", name: str = "", op_index: int | None = None
    ):
        super().__init__(message)
        self.kind = kind
        self.name = name
        self.op_index = op_index


class NotFound(StoreError):
    pass


class AlreadyExists(StoreError):
    pass


class Conflict(StoreError):
    pass


class Unavailable(StoreError):
    pass


class InvalidRequest(StoreError):
    pass


class Gone(StoreError):
    pass
