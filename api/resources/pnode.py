"""The PNode: a physical machine that hosts VNodes, registered and kept alive by its agent."""

from __future__ import annotations

from datetime import datetime
from typing import ClassVar, Literal

from pydantic import Field

from api.resources.meta import Condition, DNSLabel, Model, Resource
from api.resources.network import AcceleratorType
from api.resources.quantity import CpuMillis, MemoryBytes


class Accelerator(Model):
    type: AcceleratorType
    count: int = Field(default=1, ge=0, le=64)
    memory: MemoryBytes = 0


class Capacity(Model):
    cpu: CpuMillis = 0
    memory: MemoryBytes = 0
    accelerators: list[Accelerator] = Field(default_factory=list)

    def accelerator_count(self, kind: str) -> int:
        return sum(a.count for a in self.accelerators if a.type == kind)


class PNodeSpec(Model):
    address: str = Field(min_length=1, max_length=255)
    capacity: Capacity = Field(default_factory=Capacity)
    datasets: list[DNSLabel] = Field(default_factory=list)
    #: Cordoned: no new work is placed here (kubectl cordon).
    unschedulable: bool = False
    #: Draining: existing work migrates away too (kubectl drain).
    draining: bool = False
    #: sha256 of the agent's credential; the credential itself is never stored.
    credential_hash: str = ""
    #: sha256 of the credential the agent proved at its last registration. Register (and
    #: nothing else) accepts it once more, so an agent whose Register reply was lost (the
    #: orchestrator rotated the credential, the agent never saw the new one) can repeat it
    #: instead of being locked out of its own name. Never sent, like `credential_hash`.
    previous_credential_hash: str = ""


PNodePhase = Literal["Ready", "NotReady", "Lost"]
#: How a PNode was admitted: `open` (permissionless registration) or `token` (it presented
#: a join token of `serve --join-token-file`).
JoinedBy = Literal["open", "token"]


class Trust(Model):
    """Written by `controller.trust.book` only (coalesced), and cleared by Uncordon."""

    consecutive_valid: int = 0
    #: Strikes within `window`; Uncordon sets it to 0 (and `controller.trust.book` then forgets
    #: the window's strikes too).
    strikes: int = 0
    bugged: bool = False
    #: The last results, oldest first: "V" valid, "S" strike (failed a check or lost a vote).
    window: str = Field(default="", max_length=1000)
    #: When `bugged` last became true: the start of the probation period, if one is set.
    bugged_since: datetime | None = None
    valid_total: int = 0
    strikes_total: int = 0


ValidationVerdict = Literal["accepted", "rejected", "disputed", "bugged", "probation-cleared"]


class ValidationEvent(Model):
    """One validation outcome worth showing in `describe pnode` (strikes and transitions;
    plain valid results are only counted)."""

    time: datetime
    job: str = ""
    vnode: str = ""
    check: str = ""
    verdict: ValidationVerdict
    message: str = Field(default="", max_length=512)


class PNodeIdentity(Model):
    """The PNode's identity certificate (docs/security.md), written at Register and at each
    renewal through Heartbeat."""

    #: When the current certificate expires; None before the first one.
    expires_at: datetime | None = None


class PNodeStatus(Model):
    phase: PNodePhase = "Ready"
    #: How its first registration was admitted; re-registrations keep it. None: registered
    #: before the orchestrator recorded it.
    joined_by: JoinedBy | None = None
    #: When the current incarnation registered. A PNode whose lease was never renewed since
    #: is "pending" (no heartbeat ever arrived): it is capped and garbage-collected early.
    registered_at: datetime | None = None
    #: When `phase` last changed: the start of the NotReady grace and of Lost retention.
    phase_since: datetime | None = None
    #: Sum of the resources of the allocations placed here, written in the same
    #: transaction as each allocation, so it can never disagree with them.
    allocated: Capacity = Field(default_factory=Capacity)
    #: Bumped on every registration; an agent presenting an older one is fenced, and
    #: allocations placed for an older incarnation are re-issued with a new epoch.
    incarnation: int = 0
    #: Bumped in every transaction that changes an allocation placed here: the version of
    #: this PNode's assignment set, the same on every orchestrator replica.
    assignments_version: int = 0
    #: The set `assignments_version` stands for, summed up: the XOR of a term per
    #: allocation placed here (`api.resources.allocation.folded`), updated in the same
    #: transactions. A replica's view publishes a version only while the allocations it
    #: holds for this PNode have exactly this digest, so an agent is never told a version
    #: with less than its set. None: written before the digest existed, not checked.
    assignments_digest: str | None = None
    trust: Trust = Field(default_factory=Trust)
    #: The last `controller.trust.book.MAX_EVENTS` validation events, oldest first.
    validation_events: list[ValidationEvent] = Field(default_factory=list)
    missed_heartbeats: int = 0
    evictions: int = 0
    identity: PNodeIdentity = Field(default_factory=PNodeIdentity)
    conditions: list[Condition] = Field(default_factory=list)


class PNode(Resource):
    KIND: ClassVar[str] = "PNode"
    PLURAL: ClassVar[str] = "pnodes"
    INDEXES: ClassVar[tuple[str, ...]] = ("phase",)

    kind: Literal["PNode"] = "PNode"
    spec: PNodeSpec
    status: PNodeStatus = Field(default_factory=PNodeStatus)

    def index_values(self) -> dict[str, str | None]:
        return {"phase": self.status.phase}
