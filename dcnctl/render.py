"""What `get` prints: a table per kind (normal and wide), or the resources as JSON, YAML or
names. Rows are computed from the resource models alone, plus per-PNode allocation counts
(which only a listing of allocations can give)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import yaml

from api import manifest
from api.resources import allocation, job, meta, network, pnode, quantity
from dcnctl import kinds, tables

OUTPUTS = ("wide", "yaml", "json", "name")

HEADERS: dict[str, tuple[list[str], list[str]]] = {
    "Network": (["NAME", "READY", "PHASE", "AGE"], ["VNODES", "GENERATION"]),
    "PNode": (
        ["NAME", "STATUS", "CPU", "MEMORY", "ALLOCATIONS", "TRUST", "STRIKES", "JOINED", "AGE"],
        ["ADDRESS", "INCARNATION", "IDENTITY", "LABELS"],
    ),
    "Allocation": (["NAME", "NETWORK", "VNODE", "REPLICA", "PNODE", "EPOCH", "PHASE", "AGE"], []),
    "Job": (["NAME", "NETWORK", "PHASE", "STEP", "EPOCH", "LOSS", "ACCURACY", "AGE"], []),
}


def headers(kind: kinds.Kind, *, wide: bool) -> list[str]:
    normal, extra = HEADERS[kind.kind]
    return normal + extra if wide else list(normal)


def row(
    resource: meta.Resource,
    now: datetime,
    *,
    wide: bool,
    allocations_on: Mapping[str, int] | None = None,
) -> list[str]:
    age = tables.age(resource.metadata.creation_timestamp, now)
    if isinstance(resource, network.Network):
        s = resource.status
        cells = [resource.name, f"{s.ready_slots}/{s.desired_slots}", s.phase, age]
        extra = [str(len(resource.spec.vnodes)), str(resource.metadata.generation)]
    elif isinstance(resource, pnode.PNode):
        cap, used = resource.spec.capacity, resource.status.allocated
        held = (allocations_on or {}).get(resource.name, 0)
        cells = [
            resource.name,
            pnode_status(resource),
            f"{cpu(used.cpu)}/{cpu(cap.cpu)}",
            f"{memory(used.memory)}/{memory(cap.memory)}",
            str(held),
            str(resource.status.trust.consecutive_valid),
            str(resource.status.trust.strikes),
            resource.status.joined_by or tables.NONE,
            age,
        ]
        extra = [
            resource.spec.address,
            str(resource.status.incarnation),
            identity_validity(resource, now),
            tables.label_list(resource.metadata.labels),
        ]
    elif isinstance(resource, allocation.Allocation):
        spec = resource.spec
        cells = [resource.name, spec.network, spec.vnode, str(spec.replica), spec.pnode,
                 str(spec.epoch), resource.status.phase, age]  # fmt: skip
        extra = []
    elif isinstance(resource, job.Job):
        st, job_spec = resource.status, resource.spec
        cells = [
            resource.name,
            job_spec.network,
            st.phase,
            f"{st.step}/{st.total_steps or '?'}",
            f"{st.epoch}/{job_spec.epochs}",
            tables.NONE if st.loss is None else f"{st.loss:.4f}",
            tables.NONE if st.accuracy is None else f"{st.accuracy:.3f}",
            age,
        ]
        extra = []
    else:  # pragma: no cover - get accepts the four kinds above only
        raise TypeError(type(resource).__name__)
    return cells + extra if wide else cells


def identity_validity(node: pnode.PNode, now: datetime) -> str:
    """How long the PNode's identity certificate stays valid ("42m"), "expired", or <none>
    before the first one (read through getattr: an older server's documents lack it)."""
    found = getattr(node.status, "identity", None)
    expires = getattr(found, "expires_at", None)
    if expires is None:
        return tables.NONE
    return "expired" if expires <= now else tables.duration(expires - now)


def pnode_status(node: pnode.PNode) -> str:
    """kubectl's node STATUS: the phase, then what keeps work away."""
    parts: list[str] = [node.status.phase]
    if node.spec.unschedulable:
        parts.append("SchedulingDisabled")
    if node.spec.draining:
        parts.append("Draining")
    if node.status.trust.bugged:
        parts.append("Bugged")
    return ",".join(parts)


def cpu(millis: int) -> str:
    return str(quantity.format_cpu(millis))


def memory(amount: int) -> str:
    return str(quantity.format_memory(amount)) if amount else "0"


def table(
    kind: kinds.Kind,
    resources: Sequence[meta.Resource],
    now: datetime,
    *,
    wide: bool,
    no_headers: bool,
    allocations_on: Mapping[str, int] | None = None,
) -> str:
    rows = [row(r, now, wide=wide, allocations_on=allocations_on) for r in resources]
    return tables.render(headers(kind, wide=wide), rows, no_headers=no_headers)


def structured(resources: Sequence[meta.Resource], output: str, *, single: bool) -> str:
    """-o json|yaml: the object itself for one named resource, else a List of them."""
    body: dict[str, Any]
    if single:
        body = _document(resources[0])
    else:
        body = {
            "apiVersion": meta.API_VERSION,
            "kind": "List",
            "items": [_document(r) for r in resources],
        }
    if output == "json":
        return json.dumps(body, indent=2, ensure_ascii=False) + "\n"
    return yaml.safe_dump(body, sort_keys=False, allow_unicode=True, default_flow_style=False)


def _document(resource: meta.Resource) -> dict[str, Any]:
    body = manifest.to_manifest(resource)
    if isinstance(resource, pnode.PNode):
        # The server never sends the hashes; the model's empty defaults are not information.
        if not resource.spec.credential_hash:
            body["spec"].pop("credentialHash", None)
        if not resource.spec.previous_credential_hash:
            body["spec"].pop("previousCredentialHash", None)
    return body


def names(kind: kinds.Kind, resources: Sequence[meta.Resource]) -> str:
    return "".join(kind.ref(r.name) + "\n" for r in resources)
