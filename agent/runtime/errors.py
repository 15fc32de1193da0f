"""The runtime's errors, drawn once.

    ValueError
     ├── KindError    a VNode's params or inputs are wrong (names the param/input, the
     │    │           value, and what would be valid); the agent answers INVALID_ARGUMENT
     │    └── DataError   an input VNode's data ref cannot be read (names the url and field)
     └── StateError   checkpoint bytes that are not a VNode state

DataError is a KindError because, to whoever sent the batch, an unreadable data ref is a
misconfigured input VNode like any other; the agent need catch only one class for
"this VNode cannot compute that".
"""

from __future__ import annotations


class KindError(ValueError):
    pass


class DataError(KindError):
    pass


class StateError(ValueError):
    pass
