"""The trained model follows its VNodes: a VNode re-placed after training is restored.

A VNode's parameters live in the agent that hosts it. When a slot moves after its last
training run ended (its PNode died, was drained, or re-registered), the new instance starts
empty, and an inference through it would silently use random weights. Before each
inference, every slot whose current epoch differs from the epoch that holds the network's
latest finished training state is restored from that run's final checkpoint, and the new
epoch is recorded so the next inference restores nothing. Every replica counts: one placed
since (a tiebreaker, a raised `replicas`) is restored from its VNode's one checkpoint too.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime

from api.dcnr.v1 import vnode_pb2
from api.resources import allocation, job
from controller.jobs import driver_calls, driver_plan, vnode_client
from controller.state import view as view_mod
from store import base, errors

log = logging.getLogger("dcnr.model_state")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


async def latest_model(store: base.Store, network: str) -> job.Job | None:
    """The network's most recently created Succeeded training job, if any."""
    jobs = await base.list_all(store, job.Job, index=("network", network))
    done = [
        j
        for j in jobs
        if j.spec.type == "train" and j.status.phase == "Succeeded" and j.status.checkpoint_blobs
    ]
    return max(done, key=lambda j: j.metadata.creation_timestamp or _EPOCH, default=None)


async def ensure_restored(
    network: str,
    *,
    store: base.Store,
    view: view_mod.View,
    client: vnode_client.VNodeClient,
    deadline: float,
) -> int:
    """Restore every moved or new replica of each stateful VNode of `network` (a tiebreaker
    included) from the VNode's checkpoint; returns how many were restored."""
    model = await latest_model(store, network)
    net = view.networks.get(network)
    if model is None or net is None:
        return 0
    status = model.status
    counts = driver_plan.replica_counts(net)
    stale: dict[str, tuple[str, int, int]] = {}  # slot → (vnode, replica, current epoch)
    for v in net.spec.vnodes:
        text = status.checkpoint_blobs.get(allocation.slot_name(network, v.name, 0))
        if not text:
            continue
        for replica in range(counts[v.name]):
            slot = allocation.slot_name(network, v.name, replica)
            current = view.allocations.get(slot)
            if current is not None and status.checkpoint_epochs.get(slot) != current.spec.epoch:
                stale[slot] = (v.name, replica, current.spec.epoch)
    if not stale:
        return 0
    around = net.neighbours()

    async def one(vnode: str, replica: int, epoch: int) -> None:
        request = vnode_pb2.RestoreRequest(
            job=model.name,
            step=status.checkpoint_step,
            network=network,
            vnode=vnode,
            replica=replica,
            epoch=epoch,
            seed=model.spec.seed,
            attempt=status.attempt,
            optimizer=model.spec.optimizer,
            learning_rate=model.spec.learning_rate,
            blob=driver_calls.blob_ref(
                status.checkpoint_blobs[allocation.slot_name(network, vnode, 0)]
            ),
            neighbour_replicas=driver_plan.neighbour_replicas(counts, around, vnode),
        )
        await client.restore(
            network, vnode, request, deadline=deadline, epoch=epoch, replica=replica
        )
        log.info(
            "network %s: restored %s.%d (epoch %d) from job %s",
            network,
            vnode,
            replica,
            epoch,
            model.name,
        )

    await asyncio.gather(*(one(v, r, e) for v, r, e in stale.values()))
    await _record(store, model, {slot: e for slot, (_, _, e) in stale.items()})
    return len(stale)


async def _record(store: base.Store, model: job.Job, epochs: dict[str, int]) -> None:
    """Note the restored epochs; losing a race only means the next inference restores again."""
    updated = model.model_copy(deep=True)
    updated.status.checkpoint_epochs.update(epochs)
    try:
        await store.update(updated)
    except (errors.Conflict, errors.NotFound):
        log.info("job %s moved on; restored epochs not recorded", model.name)
