"""Preferences among feasible PNodes, each normalized to [0, 1] (higher is better).

Normalizing every scorer to the same range is what makes the weights in `config.Weights`
mean what they say: a weight of 2 counts twice as much, whatever the scorer measures.
Scorers only rank PNodes the filters already accepted, so they may assume a fit.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from scheduler import config, model

Scorer = Callable[[model.Request, model.NodeView], float]
#: The score a scorer gives every PNode for this request, when the request alone decides
#: it (None: it depends on the PNode).
Uniform = Callable[[model.Request], float | None]

#: An eviction costs a restart from checkpoint; a missed heartbeat usually costs nothing.
EVICTION_PENALTY = 2


def _free_after(capacity: int, allocated: int, requested: int) -> float:
    free = capacity - allocated - requested
    if free <= 0:
        return 0.0
    return 1.0 if free >= capacity else free / capacity


def least_allocated(request: model.Request, node: model.NodeView) -> float:
    """Mean free fraction of each resource the node has, after placing the request.

    Spreads load, leaving headroom on every PNode for the next dead peer's VNodes.
    """
    total = 0.0
    dimensions = 0
    if node.cpu_capacity > 0:
        total += _free_after(node.cpu_capacity, node.cpu_allocated, request.cpu)
        dimensions += 1
    if node.memory_capacity > 0:
        total += _free_after(node.memory_capacity, node.memory_allocated, request.memory)
        dimensions += 1
    if request.accelerator is not None:
        capacity = model.count(node.accelerators, request.accelerator)
        if capacity > 0:
            allocated = model.count(node.accelerators_allocated, request.accelerator)
            total += _free_after(capacity, allocated, request.accelerator_count)
            dimensions += 1
    return total / dimensions if dimensions else 0.0


def reliability(request: model.Request, node: model.NodeView) -> float:
    """1 for a PNode that never missed a heartbeat nor lost work; falls off hyperbolically."""
    return 1.0 / (1 + max(node.missed_heartbeats, 0) + EVICTION_PENALTY * max(node.evictions, 0))


def trust(request: model.Request, node: model.NodeView) -> float:
    return min(max(node.trust, 0.0), 1.0)


def data_locality(request: model.Request, node: model.NodeView) -> float:
    """1 if the PNode already holds the request's dataset (no download before starting)."""
    return 1.0 if request.dataset is not None and request.dataset in node.datasets else 0.0


def graph_affinity(request: model.Request, node: model.NodeView) -> float:
    """For a PNode hosting a graph neighbour (their tensors then never cross the network,
    and an agent hands them over in process): its free fraction after placing the request
    (`least_allocated`); 0 for any other PNode.

    Scaled by what stays free so that co-location pays while it is cheap and stops short of
    packing: with equal weights, a neighbour's PNode beats an empty one only while it stays
    more than half free, so a small network gathers on one PNode and a large one still
    spreads, leaving every PNode headroom for a dead peer's VNodes."""
    return least_allocated(request, node) if node.name in request.near else 0.0


def _no_dataset(request: model.Request) -> float | None:
    return 0.0 if request.dataset is None else None


def _no_neighbour_placed(request: model.Request) -> float | None:
    return 0.0 if not request.near else None


def _no_operator_to_avoid(request: model.Request) -> float | None:
    return 1.0 if not request.avoid_operators else None


def operator_spread(request: model.Request, node: model.NodeView) -> float:
    """1 if the PNode shares no operator hint with the PNodes holding the VNode's other
    replicas: replicas compared against each other should not be one operator's, who could
    make them tell the same lie (`model.operator_hints`)."""
    return 0.0 if node.operators & request.avoid_operators else 1.0


@dataclasses.dataclass(frozen=True, slots=True)
class Named:
    #: The scorer's weight in `config.Weights` and its column in explanations.
    name: str
    score: Scorer
    #: Reads only the node's history, never the request nor allocations, so placement may
    #: compute it once per PNode per call instead of once per request.
    node_only: bool = False
    #: For a request it returns a value for, the scorer gives every PNode that value, so
    #: placement skips calling it per PNode (the explanation still shows the value).
    uniform: Uniform | None = None


#: Every scorer: those that read the request first, then the node-only ones (the order of
#: explanation columns).
ALL: tuple[Named, ...] = (
    Named("least_allocated", least_allocated),
    Named("data_locality", data_locality, uniform=_no_dataset),
    Named("graph_affinity", graph_affinity, uniform=_no_neighbour_placed),
    Named("operator_spread", operator_spread, uniform=_no_operator_to_avoid),
    Named("reliability", reliability, node_only=True),
    Named("trust", trust, node_only=True),
)


def active(weights: config.Weights) -> tuple[tuple[Named, float], ...]:
    """The scorers worth computing, with their weights: those with a non-zero weight."""
    return tuple(
        (named, getattr(weights, named.name)) for named in ALL if getattr(weights, named.name) > 0
    )
