"""The trained model follows its VNodes: a VNode re-placed after training is restored.

A VNode's parameters live in the agent that hosts it. When a slot moves after its last
training run ended (its PNode died, was drained, or re-registered), the new instance starts
empty, and an inference through it would silently use random weights. Before each
inference, every slot whose current epoch differs from the epoch that holds the network's
latest finished training state is restored from that run's final checkpoint, and the new
epoch is recorded so the next inference restores nothing. Every replica counts: one placed
since (a tiebreaker, a raised `replicas`) is restored from its VNode's one checkpoint too.

Restoring is judged from the view at one moment, but the request travels afterwards, and
its inner hops go agent to agent, each resolving the child's *current* epoch: a slot that
moves in between is reached at a fresh instance that never loaded the checkpoint, and
computes with its initial weights (a run under chaos once answered at 11 % accuracy
against 88 %). So `ensure_restored` returns the epochs it vouches for, and `moved` checks
them against the store (consistent reads) once the answer is in: an epoch is written to the
store before any agent can resolve it, so an answer that reached a newer instance shows as
a slot whose stored epoch differs, and the caller throws the answer away and asks again.
The training driver applies the same check to each checkpoint before recording it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
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
) -> dict[str, int]:
    """Restore every moved or new replica of each stateful VNode of `network` (a tiebreaker
    included) from the VNode's checkpoint; returns slot → the epoch at which it holds the
    trained state, for every stateful slot (empty: no trained model)."""
    model = await latest_model(store, network)
    net = view.networks.get(network)
    if model is None or net is None:
        return {}
    status = model.status
    counts = driver_plan.replica_counts(net)
    vouched: dict[str, int] = {}
    stale: dict[str, tuple[str, int, int]] = {}  # slot → (vnode, replica, current epoch)
    for v in net.spec.vnodes:
        text = status.checkpoint_blobs.get(allocation.slot_name(network, v.name, 0))
        if not text:
            continue
        for replica in range(counts[v.name]):
            slot = allocation.slot_name(network, v.name, replica)
            current = view.allocations.get(slot)
            if current is None:
                continue  # not placed: the caller finds it not ready
            vouched[slot] = current.spec.epoch
            if status.checkpoint_epochs.get(slot) != current.spec.epoch:
                stale[slot] = (v.name, replica, current.spec.epoch)
    if not stale:
        return vouched
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
    return vouched


async def moved(store: base.Store, epochs: Mapping[str, int]) -> list[str]:
    """The slots of `epochs` (slot → epoch) whose stored allocation is gone or at another
    epoch, as "slot: epoch e → now"; consistent reads, one per slot, concurrently."""
    if not epochs:
        return []
    slots = sorted(epochs)

    async def stored(slot: str) -> int | None:
        try:
            return (await store.get(allocation.Allocation, slot)).spec.epoch
        except errors.NotFound:
            return None

    now = await asyncio.gather(*(stored(s) for s in slots))
    return [
        f"{slot}: epoch {epochs[slot]} → {'removed' if e is None else f'epoch {e}'}"
        for slot, e in zip(slots, now, strict=True)
        if e != epochs[slot]
    ]


async def _record(store: base.Store, model: job.Job, epochs: dict[str, int]) -> None:
    """Note the restored epochs; losing a race only means the next inference restores again."""
    updated = model.model_copy(deep=True)
    updated.status.checkpoint_epochs.update(epochs)
    try:
        await store.update(updated)
    except (errors.Conflict, errors.NotFound):
        log.info("job %s moved on; restored epochs not recorded", model.name)
