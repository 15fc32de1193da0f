"""What a training run needs to know before its first step: sources, sinks, slots, batches.

Pure. The one fact it cannot compute, how many samples the sources' data has, the agents
holding the data tell the driver (controller.jobs.driver_data); which data each source
reads is decided here (`source_data`): the job's own (`spec.data`, `train --data`) wins
over the network's per-VNode data ref.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

from api.resources import allocation
from api.resources import job as job_model
from api.resources import network as net_model


class JobFailed(Exception):
    """Retrying cannot help (no data, mismatched sources); the job ends Failed."""


@dataclasses.dataclass(frozen=True, slots=True)
class Plan:
    network: str
    vnodes: tuple[str, ...]
    sources: tuple[str, ...]
    sinks: tuple[str, ...]
    slots: tuple[str, ...]
    rows: int
    batch: int
    steps_per_epoch: int
    total: int
    #: vnode → replicas taking part in this attempt (`Network.replicas_of`, tiebreakers
    #: included); every one of them is restored, fed, compared and checkpointed.
    replicas: dict[str, int] = dataclasses.field(default_factory=dict)
    #: vnode → its parents and children, whose counts its Restore carries.
    neighbours: dict[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)
    #: Parts each step's batch is cut into (the job's micro_batches; `parts`).
    micro_batches: int = 1

    def replicas_of(self, vnode: str) -> int:
        return self.replicas.get(vnode, 1)

    def neighbour_replicas(self, vnode: str) -> dict[str, int]:
        """The replica counts a replica of `vnode` waits on and sends to in this attempt."""
        return neighbour_replicas(self.replicas, self.neighbours, vnode)

    def slot(self, vnode: str, replica: int = 0) -> str:
        return allocation.slot_name(self.network, vnode, replica)


def neighbour_replicas(
    counts: dict[str, int], around: dict[str, tuple[str, ...]], vnode: str
) -> dict[str, int]:
    """The replica counts of `vnode`'s parents and children (what its Restore carries)."""
    return {n: counts.get(n, 1) for n in around.get(vnode, ())}


def topology(net: net_model.Network) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(sources, sinks): VNodes without inputs, and VNodes no VNode takes as input."""
    consumed = {parent for v in net.spec.vnodes for parent in v.inputs}
    sources = tuple(v.name for v in net.spec.vnodes if not v.inputs)
    sinks = tuple(v.name for v in net.spec.vnodes if v.name not in consumed)
    return sources, sinks


def replica_counts(net: net_model.Network) -> dict[str, int]:
    return {v.name: net.replicas_of(v) for v in net.spec.vnodes}


def parts(micro_batches: int, rows: int) -> int:
    """How many equal parts a batch of `rows` samples is cut into: the most, at most
    `micro_batches`, that divide it (the job's batch_size always divides; an epoch's last,
    shorter batch may be cut into fewer), so every part of a step weighs the same."""
    return max(n for n in range(1, min(micro_batches, rows) + 1) if rows % n == 0)


def epoch_order(*, seed: int, epoch: int, rows: int) -> np.ndarray[Any, Any]:
    """The order in which epoch `epoch` (0-based) visits the rows: seeded by (seed, epoch),
    so a run restarted anywhere, on any replica, feeds the same batches."""
    return np.random.default_rng([seed % 2**64, epoch]).permutation(rows).astype(np.int64)


def batch_indices(*, seed: int, epoch: int, k: int, batch: int, rows: int) -> np.ndarray[Any, Any]:
    """Rows of batch `k` (0-based) of epoch `epoch`."""
    return epoch_order(seed=seed, epoch=epoch, rows=rows)[k * batch : (k + 1) * batch]


def source_data(job: job_model.Job, net: net_model.Network) -> dict[str, net_model.DataRef]:
    """The data each source reads in this job: the job's `spec.data` when given (it overrides
    every source's own ref, as `train --data` says), else the source's data ref. JobFailed
    names a source that has neither."""
    sources, _ = topology(net)
    chosen: dict[str, net_model.DataRef] = {}
    for name in sources:
        spec = net.vnode(name)
        assert spec is not None
        data = job.spec.data or spec.data
        if data is None:
            raise JobFailed(
                f"vnode {name!r} of network {net.name!r} is a source without data: give it "
                "a data ref in the network, or give the job spec.data"
            )
        chosen[name] = data
    return chosen


def slots(net: net_model.Network) -> tuple[str, ...]:
    """Every replica slot of the network (tiebreakers included): what must be live to run."""
    replicas = replica_counts(net)
    return tuple(
        allocation.slot_name(net.name, v.name, r)
        for v in net.spec.vnodes
        for r in range(replicas[v.name])
    )


def make_plan(job: job_model.Job, net: net_model.Network, *, rows: int) -> Plan:
    """The attempt's plan, for sources whose data has `rows` samples (their agents said so:
    controller.jobs.driver_data)."""
    sources, sinks = topology(net)
    batch = job.spec.batch_size
    per_epoch = math.ceil(rows / batch)
    replicas = replica_counts(net)
    return Plan(
        network=net.name,
        vnodes=tuple(v.name for v in net.spec.vnodes),
        sources=sources,
        sinks=sinks,
        slots=slots(net),
        rows=rows,
        batch=batch,
        steps_per_epoch=per_epoch,
        total=job.spec.epochs * per_epoch,
        replicas=replicas,
        neighbours=net.neighbours(),
        micro_batches=job.spec.micro_batches,
    )
