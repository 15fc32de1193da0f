"""The Network: a graph of VNodes, the user's desired state."""

from __future__ import annotations

import re
from typing import Annotated, Any, ClassVar, Literal

from pydantic import AfterValidator, Field, JsonValue

from api.resources.meta import Condition, DNSLabel, Model, Resource
from api.resources.quantity import CpuMillis, MemoryBytes

#: Limits that keep one user's manifest from hurting everyone else's store and scheduler.
MAX_VNODES = 10_000
MAX_INPUTS = 64
MAX_REPLICAS = 16
MAX_PARAMS_BYTES = 64 * 1024

_KIND = re.compile(r"^[a-z][a-z0-9_]{0,62}\Z")
_ACCELERATOR = re.compile(r"^[A-Za-z0-9][-A-Za-z0-9_.]{0,62}\Z")
DATA_SCHEMES = ("file://", "s3://")


def check_vnode_kind(value: str) -> str:
    if not _KIND.match(value):
        raise ValueError(
            f"invalid vnode kind {value!r}: must be a lowercase identifier such as "
            "'dense' or 'softmax_cross_entropy'"
        )
    return value


def check_data_url(value: str) -> str:
    if not value.startswith(DATA_SCHEMES) or value in DATA_SCHEMES:
        raise ValueError(f"invalid data url {value!r}: must start with file:// or s3://")
    if value.startswith("s3://") and not value[len("s3://") :].split("/", 1)[0]:
        raise ValueError(f"invalid data url {value!r}: s3:// needs a bucket")
    return value


def check_accelerator_type(value: str) -> str:
    if not _ACCELERATOR.match(value):
        raise ValueError(f"invalid accelerator type {value!r}: e.g. 'a100', 'rtx-4090'")
    return value


AcceleratorType = Annotated[str, AfterValidator(check_accelerator_type)]


class AcceleratorRequest(Model):
    type: AcceleratorType
    count: int = Field(default=1, ge=1, le=64)


class ResourceRequest(Model):
    cpu: CpuMillis = 100
    memory: MemoryBytes = 64 * 2**20
    accelerator: AcceleratorRequest | None = None


class DataRef(Model):
    """Where a VNode's data lives; `dataset` names it for locality-aware placement."""

    url: Annotated[str, AfterValidator(check_data_url)]
    dataset: DNSLabel | None = None


class VNodeSpec(Model):
    #: The VNode's name in the graph, a DNS-1123 label unique in the network.
    name: DNSLabel
    #: What the VNode computes: input, dense, relu, softmax_cross_entropy, ...
    kind: Annotated[str, AfterValidator(check_vnode_kind)]
    #: The kind's parameters (e.g. `units` of a dense layer), checked against its schema.
    params: dict[str, JsonValue] = Field(default_factory=dict)
    #: Names of the VNodes whose outputs this one takes, in order.
    inputs: list[str] = Field(default_factory=list, max_length=MAX_INPUTS)
    #: What one replica needs of a PNode: cpu ("250m"), memory ("64Mi"), an accelerator.
    resources: ResourceRequest = Field(default_factory=ResourceRequest)
    #: Copies that run at once (at least 2 under a validation policy).
    replicas: int = Field(default=1, ge=1, le=MAX_REPLICAS)
    #: Placed only on trusted PNodes.
    critical: bool = False
    #: The data a source VNode reads.
    data: DataRef | None = None


ValidationPolicy = Literal["none", "replicas", "adaptive"]
#: Under adaptive validation, how a sampled VNode whose kind has a cheaper proof than
#: recomputation (`api.kinds.spot_checkable`: dense) is checked: `auto` by that proof where
#: it costs less (`api.kinds.spot_pays`: a large enough product, else a replica recomputes),
#: `always` by that proof, `never` by a replica's recomputation.
SpotCheckPolicy = Literal["auto", "always", "never"]


class NetworkSpec(Model):
    #: The graph: one entry per VNode, edges given by each VNode's `inputs`.
    vnodes: list[VNodeSpec] = Field(min_length=1, max_length=MAX_VNODES)
    #: How results of untrusted PNodes are checked: none, replicas (compare replicas'
    #: results), adaptive (compare fewer as PNodes earn trust).
    validation: ValidationPolicy = "none"
    #: Adaptive validation only: check sampled dense results by Freivalds' spot check
    #: instead of a replica's recomputation (SpotCheckPolicy).
    spot_check: SpotCheckPolicy = "auto"


NetworkPhase = Literal["Pending", "Allocating", "Ready", "Degraded", "Terminating"]


class NetworkStatus(Model):
    phase: NetworkPhase = "Pending"
    observed_generation: int = 0
    desired_slots: int = 0
    ready_slots: int = 0
    conditions: list[Condition] = Field(default_factory=list)
    #: Epochs of slots stopped while their VNode stayed in the spec (PNode lost with nowhere
    #: to go, replica scaled down), so that the slot's next placement continues from there:
    #: a slot's epoch never goes back, even across a gap with no allocation.
    slot_epochs: dict[str, int] = Field(default_factory=dict)
    #: VNodes whose replicas disagreed with no majority: each runs one extra (tiebreaker)
    #: replica until a driver clears it after a checkpoint with no disagreement. Written by
    #: whoever saw the dispute (the driver, ValidationService), read by the network loop.
    tiebreakers: list[str] = Field(default_factory=list)
    #: Bumped with every change of `tiebreakers`: a replica count changed, so the agents
    #: hosting the network's VNodes must be told again (their assignments carry neighbours'
    #: replica counts). Part of the assignment set's version (`controller.state.view`).
    tiebreak_generation: int = Field(default=0, ge=0)


class Network(Resource):
    KIND: ClassVar[str] = "Network"
    PLURAL: ClassVar[str] = "networks"

    kind: Literal["Network"] = "Network"
    spec: NetworkSpec
    status: NetworkStatus = Field(default_factory=NetworkStatus)

    def vnode(self, name: str) -> VNodeSpec | None:
        return next((v for v in self.spec.vnodes if v.name == name), None)

    def base_replicas(self, v: VNodeSpec) -> int:
        """Replicas the spec asks for: `replicas`, at least 2 under a validation policy
        (`replicas` or `adaptive`), since a single result can only be checked, not compared."""
        return max(v.replicas, 2) if self.spec.validation != "none" else v.replicas

    def replicas_of(self, v: VNodeSpec | str) -> int:
        """Replicas that run now: `base_replicas` plus one while a tiebreaker is requested."""
        spec = self.vnode(v) if isinstance(v, str) else v
        if spec is None:
            return 0
        return self.base_replicas(spec) + (1 if spec.name in self.status.tiebreakers else 0)

    def slot_count(self) -> int:
        return sum(self.replicas_of(v) for v in self.spec.vnodes)

    # The graph. Whole-graph maps, built in one pass: asking per VNode would cost
    # O(VNodes^2) on a big graph. The one place that walks the edges for placement, slot
    # hashes and the driver; manifest validation walks the raw document instead (it must
    # also report the edges these skip).

    def consumers(self) -> dict[str, tuple[str, ...]]:
        """VNode -> the VNodes that take it as an input, in spec order, each once."""
        found: dict[str, dict[str, None]] = {v.name: {} for v in self.spec.vnodes}
        for v in self.spec.vnodes:
            for parent in v.inputs:
                if parent in found:
                    found[parent][v.name] = None
        return {name: tuple(names) for name, names in found.items()}

    def neighbours(self) -> dict[str, tuple[str, ...]]:
        """VNode -> the VNodes it exchanges tensors with: its inputs in their order, then
        its consumers in spec order; each once, never itself."""
        consumers = self.consumers()
        return {
            v.name: tuple(n for n in dict.fromkeys([*v.inputs, *consumers[v.name]]) if n != v.name)
            for v in self.spec.vnodes
        }


def params_size(params: dict[str, Any]) -> int:
    """Bytes the params take on the wire, for the MAX_PARAMS_BYTES limit."""
    import json

    return len(json.dumps(params, separators=(",", ":")).encode())
