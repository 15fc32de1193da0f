"""Feasibility checks: can this PNode take this request at all?

Each check is independent and returns None (passes) or a short reason that reads after a
count ("7 insufficient memory", "5 lack accelerator a100"), because reasons are counted
across PNodes to answer "why is this unschedulable". A PNode is reported under the first
check it fails, in `CAPABILITY` order then anti-affinity: state before resources, since a
PNode that is not ready has no meaningful free memory.

The `CAPABILITY` checks read only the request's `shape` and the node's `signature`, so
their combined verdict can be cached per (shape, signature): identical PNodes are checked
once. Anti-affinity reads the node's name and the trust floor its trust, so they are not.
"""

from __future__ import annotations

from collections.abc import Callable

from scheduler import model

Filter = Callable[[model.Request, model.NodeView], str | None]

NOT_READY = "not ready"
BUGGED = "bugged"
CORDONED = "cordoned"
DRAINING = "draining"
INSUFFICIENT_CPU = "insufficient cpu"
INSUFFICIENT_MEMORY = "insufficient memory"
ANTI_AFFINITY = "host another replica"
BELOW_TRUST_FLOOR = "below trust floor"


def lacks_accelerator(kind: str) -> str:
    return f"lack accelerator {kind}"


def insufficient_accelerator(kind: str) -> str:
    return f"insufficient accelerator {kind}"


def ready(request: model.Request, node: model.NodeView) -> str | None:
    return None if node.ready else NOT_READY


def not_bugged(request: model.Request, node: model.NodeView) -> str | None:
    return BUGGED if node.bugged else None


def schedulable(request: model.Request, node: model.NodeView) -> str | None:
    return None if node.schedulable else CORDONED


def not_draining(request: model.Request, node: model.NodeView) -> str | None:
    return DRAINING if node.draining else None


def cpu_fits(request: model.Request, node: model.NodeView) -> str | None:
    if node.cpu_allocated + request.cpu > node.cpu_capacity:
        return INSUFFICIENT_CPU
    return None


def memory_fits(request: model.Request, node: model.NodeView) -> str | None:
    if node.memory_allocated + request.memory > node.memory_capacity:
        return INSUFFICIENT_MEMORY
    return None


def accelerator_fits(request: model.Request, node: model.NodeView) -> str | None:
    kind = request.accelerator
    if kind is None or request.accelerator_count <= 0:
        return None
    capacity = model.count(node.accelerators, kind)
    if capacity <= 0:
        return lacks_accelerator(kind)
    if model.count(node.accelerators_allocated, kind) + request.accelerator_count > capacity:
        return insufficient_accelerator(kind)
    return None


def anti_affinity(request: model.Request, node: model.NodeView) -> str | None:
    return ANTI_AFFINITY if node.name in request.avoid else None


def below_trust_floor(node: model.NodeView, floor: float) -> str | None:
    """Soft: applied only while some feasible PNode at or above the floor exists."""
    return BELOW_TRUST_FLOOR if node.trust < floor else None


#: Checks whose verdict depends only on (request.shape, node.signature).
CAPABILITY: tuple[Filter, ...] = (
    ready,
    not_bugged,
    schedulable,
    not_draining,
    cpu_fits,
    memory_fits,
    accelerator_fits,
)

#: Every hard check, in reporting order.
HARD: tuple[Filter, ...] = (*CAPABILITY, anti_affinity)


def capability(request: model.Request, node: model.NodeView) -> str | None:
    for check in CAPABILITY:
        reason = check(request, node)
        if reason is not None:
            return reason
    return None


def hard(request: model.Request, node: model.NodeView) -> str | None:
    """The first hard check `node` fails for `request`, or None if it is feasible."""
    return capability(request, node) or anti_affinity(request, node)
