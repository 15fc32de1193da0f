"""Resource models: Network, PNode, PNodeLease, Allocation, Job, TrainingLock, Orchestrator,
Event, IdentityAuthority.

Pure data and validation (pydantic v2); no I/O. The store persists these, the gRPC API
carries them as JSON documents, and manifests parse into them. The facts every layer above
derives from them live here once: capacity arithmetic (`amounts`), the condition
transition rule (`meta.condition`) and the VNode graph (`Network.neighbours`).
"""

from __future__ import annotations

from api.resources.allocation import Allocation
from api.resources.event import Event
from api.resources.identity_ca import IdentityAuthority
from api.resources.job import Job, TrainingLock
from api.resources.lease import PNodeLease
from api.resources.meta import Resource
from api.resources.network import Network
from api.resources.orchestrator import Orchestrator
from api.resources.pnode import PNode

#: Every stored kind, by its `kind` string.
KINDS: dict[str, type[Resource]] = {
    cls.KIND: cls
    for cls in (
        Network, PNode, PNodeLease, Allocation, Job, TrainingLock, Orchestrator, Event,
        IdentityAuthority,
    )
}  # fmt: skip

__all__ = [
    "KINDS",
    "Allocation",
    "Event",
    "IdentityAuthority",
    "Job",
    "Network",
    "Orchestrator",
    "PNode",
    "PNodeLease",
    "Resource",
    "TrainingLock",
]
