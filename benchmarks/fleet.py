"""Simulated clusters written straight into a store: PNodes with varied capabilities, and
networks of chained VNodes with varied requests, as the placement and scale scenarios use.

Records are written as the registry and `Apply` would leave them (a Ready PNode of
incarnation 1 with its lease, a Network holding the loop's finalizer), many per transaction,
because only what happens after they exist is being measured.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from api.resources import lease, network, pnode
from reconcilers import network as network_loop
from store import base

GiB = 2**30


def pnode_record(index: int, rng: random.Random, *, now: datetime) -> pnode.PNode:
    """Heterogeneous: 4/8/16 cores, 8/16/32 GiB, one in ten with a100s, one in seven holding
    the `digits` data set, a few with a history of missed heartbeats."""
    accelerators = [{"type": "a100", "count": rng.choice((1, 2, 4))}] if index % 10 == 0 else []
    return pnode.PNode.model_validate(
        {
            "metadata": {"name": f"pnode-{index:06d}", "labels": {"zone": f"z{index % 4}"}},
            "spec": {
                "address": f"10.{index // 65536 % 256}.{index // 256 % 256}.{index % 256}:7100",
                "capacity": {
                    "cpu": rng.choice(("4", "8", "16")),
                    "memory": rng.choice(("8Gi", "16Gi", "32Gi")),
                    "accelerators": accelerators,
                },
                "datasets": ["digits"] if index % 7 == 0 else [],
            },
            "status": {
                "phase": "Ready",
                "phaseSince": now.isoformat(),
                "incarnation": 1,
                "missedHeartbeats": rng.choice((0, 0, 0, 1, 3)),
            },
        }
    )


def lease_record(name: str, *, now: datetime, duration: float) -> lease.PNodeLease:
    return lease.PNodeLease.model_validate(
        {
            "metadata": {"name": name},
            "spec": {"incarnation": 1, "renewTime": now.isoformat(), "durationSeconds": duration},
        }
    )


def network_record(name: str, size: int, rng: random.Random) -> network.Network:
    """A chain of `size` VNodes (each the input of the next, so graph affinity has work to
    do); requests of 100m-500m CPU and 64-256 MiB, one in fifty wanting an a100, one in ten
    reading the `digits` data set."""
    vnodes: list[dict[str, Any]] = []
    for i in range(size):
        resources: dict[str, Any] = {
            "cpu": rng.choice(("100m", "250m", "500m")),
            "memory": rng.choice(("64Mi", "128Mi", "256Mi")),
        }
        if i % 50 == 49:
            resources["accelerator"] = {"type": "a100", "count": 1}
        vnode: dict[str, Any] = {
            "name": f"v{i}",
            "kind": "input" if i == 0 else "dense",
            "resources": resources,
        }
        if i:
            vnode["inputs"] = [f"v{i - 1}"]
        if i % 10 == 0:
            vnode["data"] = {"url": "file://examples/digits/data.npz", "dataset": "digits"}
        vnodes.append(vnode)
    return network.Network.model_validate(
        {
            "metadata": {"name": name, "finalizers": [network_loop.FINALIZER]},
            "spec": {"vnodes": vnodes},
        }
    )


async def create_all(
    store: base.Store, records: Sequence[Any], *, per_transaction: int = 100
) -> None:
    for start in range(0, len(records), per_transaction):
        chunk = records[start : start + per_transaction]
        await store.transact([base.Create(r) for r in chunk])


async def create_pnodes(
    store: base.Store,
    count: int,
    *,
    seed: int,
    now: datetime,
    lease_duration: float | None = None,
) -> list[pnode.PNode]:
    """`count` Ready PNodes (and their leases, when `lease_duration` is given)."""
    rng = random.Random(seed)
    records = [pnode_record(i, rng, now=now) for i in range(count)]
    await create_all(store, records)
    if lease_duration is not None:
        leases = [lease_record(r.name, now=now, duration=lease_duration) for r in records]
        await create_all(store, leases)
    return await base.list_all(store, pnode.PNode)
