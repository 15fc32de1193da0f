"""The PNode lease: a tiny record an agent's heartbeats renew, apart from the PNode itself.

Kept out of the PNode record for the reason Kubernetes moved node heartbeats into Lease
objects: renewals are the most frequent write in the system, and on their own small record
they never conflict with the placements that update a PNode's capacity accounting, and cost
one small item write instead of rewriting the whole PNode.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import ClassVar, Literal

from pydantic import Field

from api.resources.meta import Model, Resource


class LeaseSpec(Model):
    #: The PNode incarnation that holds the lease; a renewal from another one is fenced.
    incarnation: int = Field(default=0, ge=0)
    renew_time: datetime
    duration_seconds: float = Field(gt=0)


class PNodeLease(Resource):
    """Named like its PNode."""

    KIND: ClassVar[str] = "PNodeLease"
    PLURAL: ClassVar[str] = "pnodeleases"

    kind: Literal["PNodeLease"] = "PNodeLease"
    spec: LeaseSpec

    def expires_at(self) -> datetime:
        return self.spec.renew_time + timedelta(seconds=self.spec.duration_seconds)
