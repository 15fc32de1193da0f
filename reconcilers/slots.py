"""A Network's replica slots: which exist, what each runs (its hash), and the plan's seed.

Pure: no I/O. Everything here is derived from the Network record alone, so every
orchestrator replica reading the same record derives the same slots, hashes and seed, and
computes the same plan without talking to the others.

`SpecCache` keeps what a plan derives from the spec at a cost (`Derived`: the VNodes'
hashes and the graph's neighbours) from one pass to the next while the Network's uid and
generation stay the same: a spec only changes with its generation (the writer's
job, `api.resources.meta`; the plan's seed relies on it too). Deriving them afresh was a
quarter of a re-placement pass over a 1,000-VNode network in which a tenth of the slots
moved (issue 13).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Iterator, Mapping, Sequence

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


@dataclasses.dataclass(frozen=True, slots=True)
class Derived:
    """What a plan derives from a Network's spec, for one uid and generation: the costly
    part (hashing every VNode, walking the graph), kept by a `SpecCache` from one pass to
    the next. Read it, never change it: the cache hands the same value to every pass.

    Names and strings only, no `VNodeSpec`: the cache outlives the record it was derived
    from (each status write brings a freshly parsed copy), and holding a spec would keep a
    second copy of it alive per network. Nor the slots, which also depend on the
    tiebreakers and cost a fraction of what they would hold (about 130 KB per 1,000
    VNodes; hashes and neighbours take about 220 KB)."""

    uid: str
    generation: int
    #: VNode name -> `vnode_hash`.
    hashes: Mapping[str, str]
    #: VNode name -> `Network.neighbours`.
    neighbours: Mapping[str, tuple[str, ...]]
    seed: int

    def matches(self, network: network_model.Network) -> bool:
        """Whether this was derived from `network`'s spec (its uid and generation)."""
        return self.uid == network.metadata.uid and self.generation == network.metadata.generation


def derive(network: network_model.Network) -> Derived:
    """Everything `Derived` holds, computed afresh."""
    return Derived(
        uid=network.metadata.uid,
        generation=network.metadata.generation,
        hashes=vnode_hashes(network),
        neighbours=network.neighbours(),
        seed=seed_for(network),
    )


class SpecCache:
    """Per Network name, the `Derived` of the spec last seen, handed out again while the
    uid and generation stay the same; derived afresh when either changed (a new spec, or
    the name re-created). One entry per name: a new generation replaces the old one.

    A plain memo owned by one loop; its workers never hold one name at once (the work
    queue's rule), and an entry is replaced, never changed, so a pass keeps the value it
    was given."""

    __slots__ = ("_entries",)

    def __init__(self) -> None:
        self._entries: dict[str, Derived] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def derived(self, network: network_model.Network) -> Derived:
        name = network.metadata.name
        held = self._entries.get(name)
        if held is not None and held.matches(network):
            return held
        fresh = self._entries[name] = derive(network)
        return fresh

    def forget(self, name: str) -> None:
        """Drop the entry of a Network that is gone."""
        self._entries.pop(name, None)
