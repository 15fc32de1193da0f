"""Builders for the network loop's tests: PNodes, Networks and Allocations as the store
would hold them, with quantities written as users write them ("500m", "1Gi")."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from api.resources import allocation, meta, network, pnode
from reconcilers import network as network_loop
from reconcilers import slots

NOW = datetime(2030, 1, 1, tzinfo=UTC)


def pnode_record(
    name: str,
    *,
    cpu: str = "4",
    memory: str = "8Gi",
    accelerators: list[dict[str, Any]] | None = None,
    phase: pnode.PNodePhase = "Ready",
    incarnation: int = 1,
    draining: bool = False,
    cordoned: bool = False,
    bugged: bool = False,
) -> pnode.PNode:
    return pnode.PNode.model_validate(
        {
            "metadata": {"name": name, "uid": f"uid-{name}", "resourceVersion": 1},
            "spec": {
                "address": f"{name}.test:7070",
                "capacity": {"cpu": cpu, "memory": memory, "accelerators": accelerators or []},
                "draining": draining,
                "unschedulable": cordoned,
            },
            "status": {
                "phase": phase,
                "incarnation": incarnation,
                "trust": {"bugged": bugged},
            },
        }
    )


def vnode(
    name: str,
    *,
    kind: str = "dense",
    inputs: list[str] | None = None,
    replicas: int = 1,
    cpu: str = "500m",
    memory: str = "512Mi",
    accelerator: dict[str, Any] | None = None,
    params: dict[str, Any] | None = None,
) -> dict[str, Any]:
    resources: dict[str, Any] = {"cpu": cpu, "memory": memory}
    if accelerator is not None:
        resources["accelerator"] = accelerator
    return {
        "name": name,
        "kind": kind,
        "inputs": inputs or [],
        "replicas": replicas,
        "resources": resources,
        "params": params or {},
    }


def network_record(
    vnodes: list[dict[str, Any]],
    *,
    name: str = "net",
    generation: int = 1,
    deleting: bool = False,
    status: dict[str, Any] | None = None,
) -> network.Network:
    return network.Network.model_validate(
        {
            "metadata": {
                "name": name,
                "uid": f"uid-{name}",
                "generation": generation,
                "resourceVersion": 1,
                "finalizers": [network_loop.FINALIZER],
                "deletionTimestamp": NOW.isoformat() if deleting else None,
            },
            "spec": {"vnodes": vnodes},
            "status": status or {},
        }
    )


def allocation_record(
    net: network.Network,
    vnode_name: str,
    replica: int,
    pnode_name: str,
    *,
    epoch: int = 1,
    incarnation: int = 1,
    vnode_hash: str | None = None,
) -> allocation.Allocation:
    """An allocation as the loop would have written it for the current spec (unless told
    otherwise), with the VNode's resources (or the default ones for a vnode not in spec)."""
    spec = net.vnode(vnode_name)
    resources = spec.resources if spec is not None else network.ResourceRequest()
    if vnode_hash is None:
        vnode_hash = slots.vnode_hash(net, vnode_name) if spec is not None else "gone"
    name = allocation.slot_name(net.metadata.name, vnode_name, replica)
    return allocation.Allocation(
        metadata=meta.ObjectMeta(name=name, uid=f"uid-{name}", resource_version=1),
        spec=allocation.AllocationSpec(
            network=net.metadata.name,
            vnode=vnode_name,
            replica=replica,
            pnode=pnode_name,
            epoch=epoch,
            pnode_incarnation=incarnation,
            vnode_hash=vnode_hash,
            resources=resources.model_copy(deep=True),
        ),
    )


def charge(node: pnode.PNode, *allocations: allocation.Allocation) -> pnode.PNode:
    """`node` with the given allocations' resources counted as allocated on it."""
    copy = node.model_copy(deep=True)
    for alloc in allocations:
        copy.status.allocated.cpu += alloc.spec.resources.cpu
        copy.status.allocated.memory += alloc.spec.resources.memory
    return copy
