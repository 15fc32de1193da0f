"""A Network's replica slots: which exist, what each runs (its hash), and the plan's seed.

Pure: no I/O. Everything here is derived from the Network record alone, so every
orchestrator replica reading the same record derives the same slots, hashes and seed, and
computes the same plan without talking to the others.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Sequence

from api.resources import allocation as allocation_model
from api.resources import network as network_model

#: Hex digits kept of the sha256: 64 bits, ample to tell two specs of one VNode apart.
HASH_CHARS = 16


def slots(network: network_model.Network) -> Iterator[tuple[str, network_model.VNodeSpec, int]]:
    """(slot name, vnode, replica) for every replica slot that runs now, in spec order: the
    replicas the spec asks for (at least two under a validation policy) plus a tiebreaker
    while one is requested (`Network.replicas_of`)."""
    name = network.metadata.name
    for vnode in network.spec.vnodes:
        for replica in range(network.replicas_of(vnode)):
            yield allocation_model.slot_name(name, vnode.name, replica), vnode, replica


def vnode_of_slot(slot: str) -> str:
    """The VNode part of a slot name (`network.vnode.replica`; network names may hold dots,
    VNode names may not, so the VNode is the second field from the right)."""
    parts = slot.rsplit(".", 2)
    return parts[-2] if len(parts) == 3 else ""


def _digest(vnode: network_model.VNodeSpec, consumers: Sequence[str]) -> str:
    # Replicas are left out on purpose: scaling a VNode must not re-issue (and so restart)
    # the replicas that keep running. Inputs keep their order, which a join may depend on;
    # consumers are a set, sorted. Everything else the agent runs the VNode from is in.
    document = {
        "kind": vnode.kind,
        "params": vnode.params,
        "inputs": list(vnode.inputs),
        "children": sorted(consumers),
        "resources": vnode.resources.model_dump(mode="json"),
        "critical": vnode.critical,
        "data": None if vnode.data is None else vnode.data.model_dump(mode="json"),
    }
    canonical = json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(canonical.encode()).hexdigest()[:HASH_CHARS]


def vnode_hashes(network: network_model.Network) -> dict[str, str]:
    """VNode name -> `vnode_hash`, for every VNode of the network at once."""
    consumers = network.consumers()
    return {v.name: _digest(v, consumers[v.name]) for v in network.spec.vnodes}


def vnode_hash(network: network_model.Network, vnode: str) -> str:
    """A stable digest of what `vnode` runs: when it changes, its slots are re-issued."""
    spec = network.vnode(vnode)
    if spec is None:
        known = ", ".join(v.name for v in network.spec.vnodes)
        raise ValueError(
            f"vnode_hash: network {network.metadata.name!r} has no vnode {vnode!r} "
            f"(its vnodes: {known})"
        )
    return _digest(spec, network.consumers()[vnode])


def seed_for(network: network_model.Network) -> int:
    """The placement seed: from the network's uid and generation, so every replica planning
    the same spec agrees, and a new spec (or a re-created network) draws afresh."""
    material = f"{network.metadata.uid}:{network.metadata.generation}".encode()
    return int.from_bytes(hashlib.sha256(material).digest()[:8], "big")
