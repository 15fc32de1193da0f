"""The soak's view of the cluster: the public gRPC API over TLS with the admin token, as
`dcnctl` would call it, translated into `soak_invariants`' observations."""

from __future__ import annotations

import json
from typing import Any

import grpc
import numpy as np
from grpc import aio

from api import tensors
from api.dcnr.v1 import (
    common_pb2,
    job_pb2,
    job_pb2_grpc,
    network_pb2,
    network_pb2_grpc,
    pnode_pb2,
    pnode_pb2_grpc,
    resolve_pb2,
    resolve_pb2_grpc,
)
from api.resources import allocation, job, pnode
from benchmarks import soak_invariants as inv

HEADER = common_pb2.RequestHeader(api_version="dcnr.io/v1", client_name="dcnr-soak")
#: Per call: a stopped replica or store must cost one poll, not stall the soak.
POLL_TIMEOUT = 3.0


class Client:
    """One replica's API; `close()` when done."""

    def __init__(self, address: str, *, ca: bytes, token: str) -> None:
        self.address = address
        self.metadata = (("authorization", f"Bearer {token}"),)
        self.channel = aio.secure_channel(address, grpc.ssl_channel_credentials(ca))
        self.networks = network_pb2_grpc.NetworkServiceStub(self.channel)
        self.pnodes = pnode_pb2_grpc.PNodeServiceStub(self.channel)
        self.resolution = resolve_pb2_grpc.ResolutionServiceStub(self.channel)
        self.jobs = job_pb2_grpc.JobServiceStub(self.channel)

    async def close(self) -> None:
        await self.channel.close(None)

    async def apply(self, manifest: dict[str, Any]) -> None:
        await self.networks.Apply(
            network_pb2.ApplyRequest(
                header=HEADER,
                document=common_pb2.ResourceDocument(
                    kind="Network", json=json.dumps(manifest).encode()
                ),
            ),
            metadata=self.metadata,
            timeout=30,
        )

    async def list_pnodes(self) -> list[inv.PNodeSeen]:
        reply = await self.pnodes.ListPNodes(
            pnode_pb2.ListPNodesRequest(header=HEADER, limit=1000),
            metadata=self.metadata,
            timeout=POLL_TIMEOUT,
        )
        found = []
        for doc in reply.items:
            p = pnode.PNode.model_validate_json(doc.json)
            found.append(
                inv.PNodeSeen(
                    name=p.name, phase=p.status.phase, incarnation=p.status.incarnation,
                    cpu=p.spec.capacity.cpu, memory=p.spec.capacity.memory,
                    allocated_cpu=p.status.allocated.cpu,
                    allocated_memory=p.status.allocated.memory,
                )
            )  # fmt: skip
        return found

    async def list_allocations(self) -> list[inv.AllocationSeen]:
        found: list[inv.AllocationSeen] = []
        token = ""
        while True:
            reply = await self.networks.ListAllocations(
                network_pb2.ListAllocationsRequest(
                    header=HEADER, limit=1000, continue_token=token
                ),
                metadata=self.metadata,
                timeout=POLL_TIMEOUT,
            )
            for doc in reply.items:
                a = allocation.Allocation.model_validate_json(doc.json)
                found.append(
                    inv.AllocationSeen(
                        network=a.spec.network, vnode=a.spec.vnode, replica=a.spec.replica,
                        pnode=a.spec.pnode, epoch=a.spec.epoch, phase=a.status.phase,
                        cpu=a.spec.resources.cpu, memory=a.spec.resources.memory,
                    )
                )  # fmt: skip
            token = reply.continue_token
            if not token:
                return found

    async def resolve(self, vnodes: list[tuple[str, str]]) -> list[inv.EndpointSeen]:
        reply = await self.resolution.BatchResolve(
            resolve_pb2.BatchResolveRequest(
                header=HEADER,
                vnodes=[common_pb2.VNodeRef(network=n, vnode=v) for n, v in vnodes],
            ),
            metadata=self.metadata,
            timeout=POLL_TIMEOUT,
        )
        return [
            inv.EndpointSeen(entry.network, entry.vnode, e.replica, e.pnode_id, e.epoch)
            for entry in reply.endpoints
            for e in entry.endpoints
        ]

    async def train(self, name: str, network: str, *, epochs: int, seed: int) -> None:
        await self.jobs.Train(
            job_pb2.TrainRequest(
                header=HEADER, name=name, network=network, epochs=epochs, batch_size=64,
                optimizer="adam", learning_rate=0.01, seed=seed, checkpoint_interval=50,
            ),
            metadata=self.metadata,
            timeout=30,
        )  # fmt: skip

    async def get_job(self, name: str) -> job.Job:
        reply = await self.jobs.GetJob(
            job_pb2.GetJobRequest(header=HEADER, name=name),
            metadata=self.metadata,
            timeout=POLL_TIMEOUT,
        )
        return job.Job.model_validate_json(reply.job.json)

    async def infer(self, network: str, x: np.ndarray, *, output: str) -> np.ndarray:
        reply = await self.jobs.Infer(
            job_pb2.InferRequest(
                header=HEADER,
                network=network,
                tensors=job_pb2.NamedTensors(tensors={"x": tensors.encode(x)}),
            ),
            metadata=self.metadata,
            timeout=60,
        )
        return tensors.decode(reply.outputs[output])
