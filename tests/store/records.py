"""Small valid records of every kind, for the store tests."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from api.resources import (
    allocation,
    event,
    identity_ca,
    job,
    lease,
    meta,
    network,
    orchestrator,
    pnode,
)
from store import base

MILLICPU_PER_SLOT = 500


def millicpu(millis: int) -> str:
    """A cpu quantity in millicores, for model input (where a plain int means cores)."""
    return f"{millis}m"


def charged(node: pnode.PNode, millis: int) -> pnode.PNode:
    """A copy of `node` with `millis` more cpu allocated."""
    copy = node.model_copy(deep=True)
    copy.status.allocated.cpu += millis
    return copy


def network_record(name: str = "mnist") -> network.Network:
    return network.Network(
        metadata=meta.ObjectMeta(name=name, labels={"team": "vision"}),
        spec=network.NetworkSpec(
            vnodes=[
                network.VNodeSpec(name="input", kind="dense", params={"units": 784}),
                network.VNodeSpec(name="hidden", kind="dense", inputs=["input"], replicas=2),
            ]
        ),
    )


def pnode_record(name: str, *, phase: pnode.PNodePhase = "Ready", cpu: int = 4000) -> pnode.PNode:
    return pnode.PNode(
        metadata=meta.ObjectMeta(name=name),
        spec=pnode.PNodeSpec(
            address=f"{name}.example:7070",
            capacity=pnode.Capacity.model_validate({"cpu": millicpu(cpu), "memory": "8Gi"}),
        ),
        status=pnode.PNodeStatus(phase=phase),
    )


def allocation_record(
    network_name: str, vnode: str, replica: int, pnode_name: str
) -> allocation.Allocation:
    return allocation.Allocation(
        metadata=meta.ObjectMeta(name=allocation.slot_name(network_name, vnode, replica)),
        spec=allocation.AllocationSpec(
            network=network_name,
            vnode=vnode,
            replica=replica,
            pnode=pnode_name,
            epoch=1,
            resources=network.ResourceRequest.model_validate(
                {"cpu": millicpu(MILLICPU_PER_SLOT), "memory": "1Mi"}
            ),
        ),
    )


def job_record(name: str, network_name: str = "mnist") -> job.Job:
    return job.Job(metadata=meta.ObjectMeta(name=name), spec=job.JobSpec(network=network_name))


def event_record(
    object_name: str = "mnist",
    *,
    reason: str = "Placed",
    message: str = "placed",
    last: datetime = datetime(2030, 1, 2, tzinfo=UTC),
    ttl: float = 3600.0,
    kind: str = "Network",
) -> event.Event:
    involved = event.ObjectReference(kind=kind, name=object_name)
    return event.Event(
        metadata=meta.ObjectMeta(name=event.name_for(involved, reason, message)),
        involved_object=involved,
        reason=reason,
        message=message,
        first_timestamp=last,
        last_timestamp=last,
        reporting_replica="r1",
        expire_time=last + timedelta(seconds=ttl),
    )


def orchestrator_record(name: str) -> orchestrator.Orchestrator:
    return orchestrator.Orchestrator(
        metadata=meta.ObjectMeta(name=name),
        spec=orchestrator.OrchestratorSpec(address="10.0.0.1:7000"),
    )


def one_of_each() -> list[meta.Resource]:
    return [
        network_record("mnist"),
        pnode_record("laptop-1"),
        allocation_record("mnist", "input", 0, "laptop-1"),
        job_record("train-1"),
        orchestrator_record("replica-a"),
        job.TrainingLock(
            metadata=meta.ObjectMeta(name="mnist"), spec=job.TrainingLockSpec(job="a")
        ),
        event_record("mnist", last=datetime(2100, 1, 1, tzinfo=UTC)),
        identity_ca.IdentityAuthority(
            metadata=meta.ObjectMeta(name=identity_ca.NAME),
            spec=identity_ca.IdentityAuthoritySpec(certificate="PEM", key="PEM"),
        ),
        lease.PNodeLease(
            metadata=meta.ObjectMeta(name="laptop-1"),
            spec=lease.LeaseSpec(
                incarnation=1, renew_time=datetime(2026, 1, 1, tzinfo=UTC), duration_seconds=4.0
            ),
        ),
    ]


def same(a: meta.Resource, b: meta.Resource) -> bool:
    return a.model_dump() == b.model_dump()


async def names(
    store: base.Store, kind: type[meta.Resource], *, index: tuple[str, str] | None = None
) -> list[str]:
    return [r.name for r in await base.list_all(store, kind, index=index)]
