"""JSON-shaped documents to validated resources: apiVersion, kind, the model, the graph.

Only the kinds users write are accepted (Network, Job); PNode, Allocation and
Orchestrator records are written by agents and controllers, and a manifest that tries to
create one is refused by name rather than silently stored.

Models are validated in strict JSON mode: `replicas: "3"` and `critical: "yes"` are
errors, as they are in Kubernetes, rather than quietly coerced.
"""

from __future__ import annotations

import json
from typing import Any

import pydantic

from api.manifest import errors, graph
from api.resources import job, meta, network

#: Kinds a user may apply, by `kind`.
USER_KINDS: dict[str, type[meta.Resource]] = {
    network.Network.KIND: network.Network,
    job.Job.KIND: job.Job,
}
#: Kinds that exist but only the system writes.
SYSTEM_KINDS = ("PNode", "Allocation", "Orchestrator")
#: `kind: List` (as `kubectl get -o json` prints) carries these apiVersions.
LIST_API_VERSIONS = ("v1", meta.API_VERSION)

_ALLOWED = ", ".join(USER_KINDS)


def resources(body: Any) -> tuple[list[meta.Resource], list[errors.FieldError]]:
    """The resources of one document: a resource, or a `kind: List` of them."""
    if isinstance(body, dict) and body.get("kind") == "List":
        return _list(body)
    resource, problems = resource_at(body, "")
    return ([resource] if resource is not None else []), problems


def _list(body: dict[str, Any]) -> tuple[list[meta.Resource], list[errors.FieldError]]:
    problems = []
    version = body.get("apiVersion", "v1")
    if version not in LIST_API_VERSIONS:
        problems.append(errors.FieldError(
            "apiVersion",
            f"unsupported apiVersion {errors.show(version)} for a List "
            f"(valid: {', '.join(LIST_API_VERSIONS)})",
        ))
    for key in body:
        if key not in ("apiVersion", "kind", "metadata", "items"):
            problems.append(errors.FieldError(
                errors.join("", key), "unknown field (known: apiVersion, kind, metadata, items)"
            ))
    items = body.get("items")
    if not isinstance(items, list):
        problems.append(errors.FieldError("items", f"must be a list, got {errors.show(items)}"))
        return [], problems
    found = []
    for i, item in enumerate(items):
        path = f"items[{i}]"
        if isinstance(item, dict) and item.get("kind") == "List":
            problems.append(errors.FieldError(
                errors.join(path, "kind"), "a List may not contain another List"
            ))
            continue
        resource, item_problems = resource_at(item, path)
        problems += item_problems
        if resource is not None:
            found.append(resource)
    return found, problems


def resource_at(body: Any, prefix: str) -> tuple[meta.Resource | None, list[errors.FieldError]]:
    """One validated resource, or None and every problem found, paths under `prefix`."""
    if not isinstance(body, dict):
        return None, [errors.FieldError(
            prefix,
            "a manifest must be a mapping with apiVersion, kind, metadata and spec, got "
            + errors.show(body),
        )]
    problems = _check_api_version(body)
    model, kind_problems = _model(body)
    problems += kind_problems
    resource = None
    if model is not None:
        try:
            resource = model.model_validate_json(json.dumps(body), strict=True)
        except pydantic.ValidationError as exc:
            problems += [
                p for p in errors.from_validation(exc, model)
                if p.path not in ("apiVersion", "kind")  # reported above, more helpfully
            ]
        if model is network.Network:
            problems += graph.check_network(body)
    if problems:
        return None, [_under(prefix, p) for p in problems]
    return resource, []


def _under(prefix: str, problem: errors.FieldError) -> errors.FieldError:
    if not prefix:
        return problem
    path = f"{prefix}.{problem.path}" if problem.path else prefix
    return errors.FieldError(path, problem.message)


def _check_api_version(body: dict[str, Any]) -> list[errors.FieldError]:
    if "apiVersion" not in body:
        return [errors.FieldError(
            "apiVersion", f"required field is missing (valid: {meta.API_VERSION})"
        )]
    version = body["apiVersion"]
    if version != meta.API_VERSION:
        return [errors.FieldError(
            "apiVersion",
            f"unsupported apiVersion {errors.show(version)} (valid: {meta.API_VERSION})",
        )]
    return []


def _model(
    body: dict[str, Any],
) -> tuple[type[meta.Resource] | None, list[errors.FieldError]]:
    if "kind" not in body:
        return None, [errors.FieldError(
            "kind", f"required field is missing (one of: {_ALLOWED})"
        )]
    kind = body["kind"]
    if not isinstance(kind, str):
        return None, [errors.FieldError(
            "kind", f"must be a string, one of: {_ALLOWED}; got {errors.show(kind)}"
        )]
    if kind in USER_KINDS:
        return USER_KINDS[kind], []
    if kind in SYSTEM_KINDS:
        return None, [errors.FieldError(
            "kind",
            f"{kind} records are written by the system and cannot be applied "
            f"(allowed: {_ALLOWED})",
        )]
    hint = next((k for k in (*USER_KINDS, *SYSTEM_KINDS) if k.lower() == kind.lower()), None)
    did_you_mean = f"; did you mean {hint}?" if hint else ""
    return None, [errors.FieldError(
        "kind", f"unknown kind {errors.show(kind)}{did_you_mean} (allowed: {_ALLOWED})"
    )]
