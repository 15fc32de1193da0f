"""Checks on a Network that no single field can make: the VNode graph and its sizes.

They run on the raw document, not on the validated model, so that a user with a typo in
one VNode's memory also hears about the cycle three VNodes later, in the same run. Shapes
the models reject (a name that is not a string, inputs that are not a list) are skipped
here; the model validation reports them.
"""

from __future__ import annotations

import json
from typing import Any

from api import kinds
from api.manifest import errors
from api.resources import meta, network

#: Error messages list at most this many known VNode names.
MAX_KNOWN_SHOWN = 20
#: At most this many cycles are named; one is usually enough to find the mistake.
MAX_CYCLES = 10


def check_network(body: dict[str, Any]) -> list[errors.FieldError]:
    problems = _check_name(body.get("metadata"))
    spec = body.get("spec")
    vnodes = spec.get("vnodes") if isinstance(spec, dict) else None
    if not isinstance(vnodes, list) or len(vnodes) > network.MAX_VNODES:
        return problems  # the model reports the wrong type or the excess
    problems += _check_params(vnodes)
    problems += _check_kinds(vnodes)
    names = _names(vnodes)
    problems += _check_unique(names)
    known = list(dict.fromkeys(name for _, name in names))
    edges, edge_problems = _edges(vnodes, set(known), known)
    problems += edge_problems
    cycles = _cycles(known, edges)
    problems += [
        errors.FieldError("spec.vnodes", "cycle " + " -> ".join([*cycle, cycle[0]]))
        for cycle in cycles
    ]
    if known:
        problems += _check_ends(vnodes, known, edges)
    return problems


def _check_name(metadata: Any) -> list[errors.FieldError]:
    """A Network's name prefixes its slot names, so it must be one DNS label."""
    name = metadata.get("name") if isinstance(metadata, dict) else None
    if not isinstance(name, str):
        return []
    try:
        meta.check_dns1123_subdomain(name)
    except ValueError:
        return []  # the model reports it
    try:
        meta.check_dns1123_label(name)
    except ValueError as exc:
        return [errors.FieldError("metadata.name", f"{exc}; a Network's name prefixes its "
                                  "slot names, so it may not contain '.'")]
    return []


def _check_params(vnodes: list[Any]) -> list[errors.FieldError]:
    problems = []
    for i, vnode in enumerate(vnodes):
        params = vnode.get("params") if isinstance(vnode, dict) else None
        if isinstance(params, dict):
            size = network.params_size(params)
            if size > network.MAX_PARAMS_BYTES:
                problems.append(errors.FieldError(
                    f"spec.vnodes[{i}].params",
                    f"params take {size} bytes as JSON, more than the limit of "
                    f"{network.MAX_PARAMS_BYTES}; keep large data in a data ref",
                ))
    return problems


def _check_kinds(vnodes: list[Any]) -> list[errors.FieldError]:
    """Each VNode's kind, params and number of inputs against the kind's schema
    (`api.kinds`), so a VNode that could never start is refused here, not on an agent."""
    problems = []
    for i, vnode in enumerate(vnodes):
        if not isinstance(vnode, dict) or not isinstance(vnode.get("kind"), str):
            continue
        try:
            network.check_vnode_kind(vnode["kind"])
        except ValueError:
            continue  # the model reports it
        params = vnode.get("params", {})
        inputs = vnode.get("inputs", [])
        if not isinstance(params, dict) or not isinstance(inputs, list):
            continue  # the model reports it
        if network.params_size(params) > network.MAX_PARAMS_BYTES:
            continue  # reported above
        for problem in kinds.check_vnode(vnode["kind"], params, len(inputs)):
            head, _, key = problem.field.partition(".")
            path = errors.join(f"spec.vnodes[{i}]", head, *([key] if key else []))
            problems.append(errors.FieldError(path, problem.message))
    return problems


def _names(vnodes: list[Any]) -> list[tuple[int, str]]:
    return [
        (i, v["name"]) for i, v in enumerate(vnodes)
        if isinstance(v, dict) and isinstance(v.get("name"), str)
    ]


def _check_unique(names: list[tuple[int, str]]) -> list[errors.FieldError]:
    first: dict[str, int] = {}
    problems = []
    for i, name in names:
        if name in first:
            problems.append(errors.FieldError(
                f"spec.vnodes[{i}].name",
                f"duplicate vnode name {json.dumps(name)} (first at spec.vnodes[{first[name]}])",
            ))
        else:
            first[name] = i
    return problems


def _edges(
    vnodes: list[Any], known: set[str], ordered: list[str]
) -> tuple[dict[str, list[str]], list[errors.FieldError]]:
    """Children of each VNode (parent -> children, in spec order) and the bad inputs."""
    children: dict[str, list[str]] = {name: [] for name in ordered}
    problems = []
    for i, vnode in enumerate(vnodes):
        if not isinstance(vnode, dict) or not isinstance(vnode.get("inputs"), list):
            continue
        name = vnode.get("name")
        seen: dict[str, int] = {}
        for j, parent in enumerate(vnode["inputs"]):
            if not isinstance(parent, str):
                continue
            path = f"spec.vnodes[{i}].inputs[{j}]"
            if parent == name:
                problems.append(errors.FieldError(
                    path, f"vnode {json.dumps(parent)} lists itself as an input"
                ))
            elif parent not in known:
                problems.append(errors.FieldError(
                    path, f"unknown vnode {json.dumps(parent)} (known: {_known(ordered)})"
                ))
            elif parent in seen:
                problems.append(errors.FieldError(
                    path, f"duplicate input {json.dumps(parent)} (also at inputs[{seen[parent]}])"
                ))
            else:
                seen[parent] = j
                if isinstance(name, str):
                    children[parent].append(name)
    return children, problems


def _known(names: list[str]) -> str:
    shown = ", ".join(names[:MAX_KNOWN_SHOWN])
    if len(names) > MAX_KNOWN_SHOWN:
        shown += f", ... and {len(names) - MAX_KNOWN_SHOWN} more"
    return shown or "none"


def _cycles(order: list[str], children: dict[str, list[str]]) -> list[list[str]]:
    """Disjoint cycles, each starting at its member earliest in the spec.

    Peeling off every VNode without a remaining parent or child leaves only VNodes on or
    between cycles; from any of them, following children must come back around.
    """
    rank = {name: i for i, name in enumerate(order)}
    alive = set(order)
    found: list[list[str]] = []
    while len(found) < MAX_CYCLES:
        _peel(alive, children)
        if not alive:
            break
        path: list[str] = []
        at: dict[str, int] = {}
        node = min(alive, key=rank.__getitem__)
        while node not in at:
            at[node] = len(path)
            path.append(node)
            node = next(c for c in children[node] if c in alive)
        cycle = path[at[node]:]
        start = cycle.index(min(cycle, key=rank.__getitem__))
        found.append(cycle[start:] + cycle[:start])
        alive.difference_update(cycle)
    return found


def _peel(alive: set[str], children: dict[str, list[str]]) -> None:
    """Remove, to a fixed point, every VNode with no alive parent or no alive child."""
    parents: dict[str, set[str]] = {name: set() for name in alive}
    kids: dict[str, set[str]] = {name: set() for name in alive}
    for parent in alive:
        for child in children[parent]:
            if child in alive:
                kids[parent].add(child)
                parents[child].add(parent)
    queue = [n for n in alive if not parents[n] or not kids[n]]
    while queue:
        node = queue.pop()
        if node not in alive:
            continue
        alive.discard(node)
        for other in parents.pop(node) | kids.pop(node):
            if other in alive:
                parents[other].discard(node)
                kids[other].discard(node)
                if not parents[other] or not kids[other]:
                    queue.append(other)


def _check_ends(
    vnodes: list[Any], known: list[str], children: dict[str, list[str]]
) -> list[errors.FieldError]:
    problems = []
    has_source = any(
        isinstance(v, dict) and isinstance(v.get("name"), str) and not v.get("inputs")
        for v in vnodes
    )
    if not has_source:
        problems.append(errors.FieldError(
            "spec.vnodes", "no source vnode: at least one vnode must have no inputs"
        ))
    if not any(not children[name] for name in known):
        problems.append(errors.FieldError(
            "spec.vnodes", "no sink vnode: at least one vnode must be no other vnode's input"
        ))
    return problems
