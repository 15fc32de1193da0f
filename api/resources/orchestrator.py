"""The Orchestrator lease: one per replica, for membership and dividing reconcile work."""

from __future__ import annotations

from datetime import datetime
from typing import ClassVar, Literal

from pydantic import Field

from api.resources.meta import Model, Resource


class OrchestratorSpec(Model):
    address: str = ""
    lease_duration_seconds: float = Field(default=10.0, gt=0)


class OrchestratorStatus(Model):
    renewed_at: datetime | None = None
    version: str = ""


class Orchestrator(Resource):
    KIND: ClassVar[str] = "Orchestrator"
    PLURAL: ClassVar[str] = "orchestrators"

    kind: Literal["Orchestrator"] = "Orchestrator"
    spec: OrchestratorSpec = Field(default_factory=OrchestratorSpec)
    status: OrchestratorStatus = Field(default_factory=OrchestratorStatus)
