"""The Allocation: one VNode replica slot placed on one PNode.

Its name is the slot's key (`network.vnode.replica`), so the store's primary key itself
guarantees that a slot has at most one allocation; migration rewrites the record with a
new PNode and a bumped epoch instead of creating a second one.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from api.resources.meta import Model, Resource
from api.resources.network import ResourceRequest


def slot_name(network: str, vnode: str, replica: int) -> str:
    return f"{network}.{vnode}.{replica}"


class AllocationSpec(Model):
    network: str
    vnode: str
    replica: int = Field(ge=0)
    pnode: str
    epoch: int = Field(ge=1)
    #: The PNode incarnation this was placed for; after the PNode re-registers, the slot is
    #: re-issued with a new epoch, because the agent dropped its VNodes.
    pnode_incarnation: int = Field(default=0, ge=0)
    #: Digest of what the VNode runs (kind, params, edges, resources); a change re-issues
    #: the slot with a new epoch.
    vnode_hash: str = ""
    resources: ResourceRequest = Field(default_factory=ResourceRequest)


AllocationPhase = Literal["Pending", "Running", "Stopping", "Failed"]


class AllocationStatus(Model):
    phase: AllocationPhase = "Pending"
    reason: str = ""
    message: str = ""


class Allocation(Resource):
    KIND: ClassVar[str] = "Allocation"
    PLURAL: ClassVar[str] = "allocations"
    INDEXES: ClassVar[tuple[str, ...]] = ("network", "pnode")

    kind: Literal["Allocation"] = "Allocation"
    spec: AllocationSpec
    status: AllocationStatus = Field(default_factory=AllocationStatus)

    def index_values(self) -> dict[str, str | None]:
        return {"network": self.spec.network, "pnode": self.spec.pnode}
