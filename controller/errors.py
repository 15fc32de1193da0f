"""Domain errors of the controller: what its rooms raise instead of speaking gRPC.

Every room below services/ raises these (or `store.errors`); `controller.services.rpc`
maps each to a gRPC status code in one table. Keep the hierarchy small: a new class is
warranted only when a caller must tell it apart.
"""

from __future__ import annotations
