"""The Allocation: one VNode replica slot placed on one PNode.

Its name is the slot's key (`network.vnode.replica`), so the store's primary key itself
guarantees that a slot has at most one allocation; migration rewrites the record with a
new PNode and a bumped epoch instead of creating a second one.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Iterable
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


#: The digest of no allocations: what a PNode that holds nothing carries.
EMPTY_DIGEST = "0" * 16


def _term(alloc: Allocation) -> int:
    """One allocation's share of its PNode's assignments digest: what the agent runs from
    it (slot, epoch, incarnation, VNode hash), never its status or store metadata, which
    the transaction that writes it does not know (uid) or which change without it mattering
    to the agent (phase)."""
    spec = alloc.spec
    return _hashed(
        alloc.metadata.name, spec.pnode, spec.epoch, spec.pnode_incarnation, spec.vnode_hash
    )


@functools.lru_cache(maxsize=1 << 16)
def _hashed(name: str, pnode: str, epoch: int, incarnation: int, vnode_hash: str) -> int:
    # Cached: a view checks a PNode's digest on every heartbeat, mostly of the same slots.
    material = f"{name}\0{pnode}\0{epoch}\0{incarnation}\0{vnode_hash}"
    return int.from_bytes(hashlib.sha256(material.encode()).digest()[:8], "big")


def folded(
    digest: str, *, gained: Iterable[Allocation] = (), lost: Iterable[Allocation] = ()
) -> str:
    """`digest` with `gained` allocations added to the set it sums up and `lost` removed.

    The digest of a set is the XOR of its members' terms, so one transaction updates it
    from the PNode record alone (adding and removing are the same XOR), whatever else the
    PNode holds, and every replica computes the same digest from the same set.
    """
    value = int(digest, 16)
    for alloc in (*gained, *lost):
        value ^= _term(alloc)
    return f"{value:016x}"


def digest_of(allocations: Iterable[Allocation]) -> str:
    """The assignments digest of exactly these allocations."""
    return folded(EMPTY_DIGEST, gained=allocations)
