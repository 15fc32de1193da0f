"""Helpers for end-to-end tests: a client of the orchestrator's public API (apply,
resolve, get) and a reader of the store that checks the invariants of DESIGN.md."""

from __future__ import annotations

import json
import time
from collections import Counter, defaultdict
from typing import Any, NamedTuple

import grpc
from grpc import aio

from api.dcnr.v1 import common_pb2, network_pb2, network_pb2_grpc, resolve_pb2, resolve_pb2_grpc
from api.resources import allocation, network, pnode
from store import base, url
from tests.support import wait

HEADER = common_pb2.RequestHeader(api_version="dcnr.io/v1", client_name="e2e-test")


class Resolved(NamedTuple):
    """What a resolution returned, and which VNodes it does not yet satisfy."""

    missing: dict[str, list[tuple[str, int]] | None]
    endpoints: dict[str, list[tuple[str, int]]]


def chain_network(name: str, count: int, *, replicated: int = 0) -> dict[str, Any]:
    """A chain of `count` VNodes (v0 → v1 → ...); the first `replicated` have 2 replicas."""
    vnodes: list[dict[str, Any]] = []
    for i in range(count):
        vnode: dict[str, Any] = {
            "name": f"v{i}",
            "kind": "input" if i == 0 else "dense",
            "resources": {"cpu": "100m", "memory": "64Mi"},
        }
        if i:
            vnode["inputs"] = [f"v{i - 1}"]
            vnode["params"] = {"units": 4}
        if i < replicated:
            vnode["replicas"] = 2
        vnodes.append(vnode)
    return {
        "apiVersion": "dcnr.io/v1",
        "kind": "Network",
        "metadata": {"name": name},
        "spec": {"vnodes": vnodes},
    }


class Api:
    """The orchestrator's management and resolution API, as any client sees it."""

    def __init__(
        self, address: str, *, token: str = "", credentials: grpc.ChannelCredentials | None = None
    ) -> None:
        """`credentials`: TLS (`grpc.ssl_channel_credentials`); plaintext without."""
        #: Sent on every call when given (`serve --admin-token-file`/`--read-only-token-file`).
        self.metadata = (("authorization", f"Bearer {token}"),) if token else ()
        self.channel = (
            aio.secure_channel(address, credentials)
            if credentials is not None
            else aio.insecure_channel(address)
        )
        self.networks = network_pb2_grpc.NetworkServiceStub(self.channel)
        self.resolution = resolve_pb2_grpc.ResolutionServiceStub(self.channel)

    async def close(self) -> None:
        await self.channel.close(None)

    async def apply(self, manifest: dict[str, Any]) -> int:
        reply = await self.networks.Apply(
            network_pb2.ApplyRequest(
                header=HEADER,
                document=common_pb2.ResourceDocument(
                    kind="Network", json=json.dumps(manifest).encode()
                ),
            ),
            metadata=self.metadata,
            timeout=30,
        )
        return reply.outcome

    async def endpoints(self, net: str, vnodes: list[str]) -> dict[str, list[tuple[str, int]]]:
        """vnode → [(pnode, epoch)] of its live endpoints."""
        reply = await self.resolution.BatchResolve(
            resolve_pb2.BatchResolveRequest(
                header=HEADER,
                vnodes=[common_pb2.VNodeRef(network=net, vnode=v) for v in vnodes],
            ),
            metadata=self.metadata,
            timeout=10,
        )
        return {
            entry.vnode: [(e.pnode_id, e.epoch) for e in entry.endpoints]
            for entry in reply.endpoints
        }

    async def wait_resolvable(
        self,
        net: str,
        want: dict[str, int],
        *,
        within: float,
        avoid: str | None = None,
    ) -> tuple[float, dict[str, list[tuple[str, int]]]]:
        """Poll until every vnode has `want[vnode]` live endpoints (none on `avoid`).
        Returns (seconds it took, endpoints); AssertionError naming what is missing."""
        start = time.monotonic()

        async def look() -> Resolved:
            try:
                endpoints = await self.endpoints(net, sorted(want))
            except aio.AioRpcError as exc:
                endpoints = {"<error>": [(exc.details() or str(exc.code()), 0)]}
            missing: dict[str, list[tuple[str, int]] | None] = {}
            for v, n in want.items():
                got = endpoints.get(v, [])
                if len(got) != n or any(p == avoid for p, _ in got):
                    missing[v] = endpoints.get(v)
            return Resolved(missing, endpoints)

        resolved = await wait.until(
            look,
            within=within,
            what=f"network {net} resolvable",
            accept=lambda r: not r.missing,
            every=0.05,
        )
        return time.monotonic() - start, resolved.endpoints


async def read_state(
    store_url: str,
) -> tuple[list[pnode.PNode], list[allocation.Allocation], list[network.Network]]:
    store = await url.open_store(store_url)
    try:
        return (
            await base.list_all(store, pnode.PNode),
            await base.list_all(store, allocation.Allocation),
            await base.list_all(store, network.Network),
        )
    finally:
        await store.close()


async def check_invariants(store_url: str) -> list[allocation.Allocation]:
    """DESIGN.md invariants 1 and 2, read from the store itself."""
    pnodes, allocations, _ = await read_state(store_url)
    by_pnode: dict[str, list[allocation.Allocation]] = defaultdict(list)
    for alloc in allocations:
        by_pnode[alloc.spec.pnode].append(alloc)
    for node in pnodes:
        held = by_pnode.get(node.name, [])
        cpu = sum(a.spec.resources.cpu for a in held)
        memory = sum(a.spec.resources.memory for a in held)
        assert node.status.allocated.cpu == cpu, f"{node.name}: accounted cpu != allocations"
        assert node.status.allocated.memory == memory, f"{node.name}: memory accounting"
        assert cpu <= node.spec.capacity.cpu, f"{node.name}: cpu over-committed"
        assert memory <= node.spec.capacity.memory, f"{node.name}: memory over-committed"
    slots = Counter((a.spec.network, a.spec.vnode, a.spec.replica) for a in allocations)
    assert max(slots.values(), default=1) == 1, "a slot has two allocations"
    placements = Counter((a.spec.network, a.spec.vnode, a.spec.pnode) for a in allocations)
    assert max(placements.values(), default=1) == 1, "two replicas of a vnode share a pnode"
    return allocations
