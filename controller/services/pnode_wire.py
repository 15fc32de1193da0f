"""PNodeService's side of the wire: validating registrations and building responses.

The hot-path messages are typed protobuf (common.proto rule 7), so this is where their units
meet the models': `cpu_millis` is millicores and the model's `cpu` is too, but the model
parses user units on construction (`cpu: 2` is two cores), so millicores are handed to it as
"<n>m" and never as a bare number.

Every rejected field is named with its path, its value and what would be valid.
"""

from __future__ import annotations

import json
import re
import secrets
from datetime import datetime, timedelta

from google.protobuf import duration_pb2, timestamp_pb2

from api.dcnr.v1 import common_pb2, pnode_pb2
from api.resources import meta, network, pnode, quantity
from controller import errors as faults
from controller.state import view as view_mod

#: Limits that keep one agent's registration from bloating every PNode listing.
MAX_LABELS = 64
MAX_DATASETS = 256
MAX_ACCELERATOR_KINDS = 16
MAX_AGENT_VERSION = 128

_PORT = re.compile(r"^[0-9]{1,5}\Z")


def generated_name() -> str:
    return f"pnode-{secrets.token_hex(4)}"


def check_name(value: str, field: str) -> str:
    try:
        return meta.check_dns1123_subdomain(value)
    except ValueError:
        raise faults.FieldInvalid(
            field,
            value,
            "must be a DNS-1123 subdomain (lowercase letters, digits, '-' and '.', "
            "at most 253 characters, alphanumeric at both ends)",
        ) from None


def check_address(value: str, field: str) -> str:
    """host:port, the host a name, an IPv4 address or a bracketed IPv6 address."""
    expected = "must be host:port with a port from 1 to 65535, e.g. '10.0.0.7:7100'"
    if not value or len(value) > 255 or any(c.isspace() for c in value):
        raise faults.FieldInvalid(field, value, expected)
    host, sep, port = value.rpartition(":")
    if not sep or not host or not _PORT.match(port) or not 1 <= int(port) <= 65535:
        raise faults.FieldInvalid(field, value, expected)
    if host.startswith("[") != host.endswith("]") or host == "[]":
        raise faults.FieldInvalid(field, value, expected)
    return value


def _check_amount(field: str, value: int, maximum: int) -> int:
    if value < 0 or value > maximum:
        raise faults.FieldInvalid(field, value, f"must be between 0 and {maximum}")
    return value


def capacity(message: common_pb2.Capacity) -> pnode.Capacity:
    cpu = _check_amount("capacity.cpu_millis", message.cpu_millis, quantity.MAX_CPU_MILLIS)
    memory = _check_amount("capacity.memory_bytes", message.memory_bytes, quantity.MAX_MEMORY_BYTES)
    if len(message.accelerators) > MAX_ACCELERATOR_KINDS:
        raise faults.FieldInvalid(
            "capacity.accelerators",
            f"{len(message.accelerators)} entries",
            f"at most {MAX_ACCELERATOR_KINDS} entries",
        )
    accelerators = []
    for i, acc in enumerate(message.accelerators):
        path = f"capacity.accelerators[{i}]"
        try:
            network.check_accelerator_type(acc.type)
        except ValueError:
            raise faults.FieldInvalid(
                f"{path}.type", acc.type, "must be an accelerator name such as 'a100'"
            ) from None
        if not 1 <= acc.count <= 64:
            raise faults.FieldInvalid(f"{path}.count", acc.count, "must be between 1 and 64")
        mem = _check_amount(f"{path}.memory_bytes", acc.memory_bytes, quantity.MAX_MEMORY_BYTES)
        accelerators.append({"type": acc.type, "count": acc.count, "memory": mem})
    # Millicores as "<n>m": a bare number would be parsed as cores.
    return pnode.Capacity.model_validate(
        {"cpu": f"{cpu}m", "memory": memory, "accelerators": accelerators}
    )


def labels(values: dict[str, str]) -> dict[str, str]:
    if len(values) > MAX_LABELS:
        raise faults.FieldInvalid("labels", f"{len(values)} labels", f"at most {MAX_LABELS} labels")
    for key in sorted(values):
        try:
            meta.check_labels({key: values[key]})
        except ValueError as exc:
            raise faults.FieldInvalid(f"labels[{key!r}]", values[key], str(exc)) from None
    return dict(values)


def datasets(values: list[str]) -> list[str]:
    if len(values) > MAX_DATASETS:
        raise faults.FieldInvalid("datasets", f"{len(values)} entries", f"at most {MAX_DATASETS}")
    for i, value in enumerate(values):
        try:
            meta.check_dns1123_label(value)
        except ValueError:
            raise faults.FieldInvalid(
                f"datasets[{i}]", value, "must be a DNS-1123 label such as 'mnist'"
            ) from None
    return sorted(set(values))


def registration(request: pnode_pb2.RegisterRequest) -> tuple[pnode.PNodeSpec, dict[str, str]]:
    """The spec (without credential hash) and labels a RegisterRequest asks for."""
    if len(request.agent_version) > MAX_AGENT_VERSION:
        raise faults.FieldInvalid(
            "agent_version", request.agent_version[:20] + "...", "at most 128 characters"
        )
    spec = pnode.PNodeSpec(
        address=check_address(request.data_plane_address, "data_plane_address"),
        capacity=capacity(request.capacity),
        datasets=datasets(list(request.datasets)),
    )
    return spec, labels(dict(request.labels))


# -- responses ---------------------------------------------------------------------------


def duration(seconds: float) -> duration_pb2.Duration:
    message = duration_pb2.Duration()
    message.FromTimedelta(timedelta(seconds=seconds))
    return message


def timestamp(at: datetime) -> timestamp_pb2.Timestamp:
    message = timestamp_pb2.Timestamp()
    message.FromDatetime(at)
    return message


def assignment_set(aset: view_mod.AssignmentSet) -> pnode_pb2.AssignmentSet:
    children: dict[tuple[str, int], dict[str, tuple[str, ...]]] = {}
    out = pnode_pb2.AssignmentSet(version=aset.version)
    for item in aset.assignments:
        net = item.network
        key = (net.metadata.uid, net.metadata.resource_version)
        if key not in children:  # computed once per network, not once per assignment
            children[key] = net.consumers()
        outputs = list(children[key].get(item.vnode.name, ()))
        out.assignments.append(_assignment(item, outputs))
    return out


def _assignment(item: view_mod.Assignment, outputs: list[str]) -> pnode_pb2.Assignment:
    spec = item.allocation.spec
    vnode = item.vnode
    resources = common_pb2.ResourceRequirements(
        cpu_millis=spec.resources.cpu, memory_bytes=spec.resources.memory
    )
    if spec.resources.accelerator is not None:
        resources.accelerator_type = spec.resources.accelerator.type
        resources.accelerator_count = spec.resources.accelerator.count
    message = pnode_pb2.Assignment(
        network=spec.network,
        vnode=spec.vnode,
        replica=spec.replica,
        epoch=spec.epoch,
        kind=vnode.kind,
        params_json=json.dumps(vnode.params, separators=(",", ":")).encode(),
        inputs=list(vnode.inputs),
        outputs=outputs,
        resources=resources,
        critical=vnode.critical,
        network_generation=item.network.metadata.generation,
        allocation=item.allocation.name,
    )
    if vnode.data is not None:
        data = common_pb2.DataRef(url=vnode.data.url, dataset=vnode.data.dataset or "")
        message.data.CopyFrom(data)
    # Neighbours' kinds let the receiving agent check what it is sent (issue: validation);
    # their replica counts (tiebreakers included), how many copies of each input to wait
    # for and compare, and how many replicas of each output to send to. A tiebreaker placed
    # elsewhere raises this set's version (`view.set_version`); a driver's Restore also
    # carries the counts, covering the moment before the agent has the new set.
    for name in [*vnode.inputs, *outputs]:
        neighbour = item.network.vnode(name)
        if neighbour is not None:
            message.neighbour_replicas[name] = item.network.replicas_of(neighbour)
            message.neighbour_kinds[name] = neighbour.kind
            message.neighbour_params_json[name] = json.dumps(
                neighbour.params, separators=(",", ":")
            ).encode()
    return message


def document(node: pnode.PNode) -> common_pb2.ResourceDocument:
    """The PNode as a ResourceDocument, without its credential hash: the hash never leaves
    the orchestrator (it would let anyone with the document try credentials offline)."""
    body = node.to_dict()
    body.get("spec", {}).pop("credentialHash", None)
    body.get("spec", {}).pop("previousCredentialHash", None)
    return common_pb2.ResourceDocument(
        kind=pnode.PNode.KIND, json=json.dumps(body, separators=(",", ":")).encode()
    )
