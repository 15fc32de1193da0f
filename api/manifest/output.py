"""Resources back to manifests, in the field order Kubernetes users read them in."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

import yaml

from api.resources import meta

_ORDER = ("apiVersion", "kind", "metadata", "spec", "status")


def to_manifest(resource: meta.Resource) -> dict[str, Any]:
    """The wire form, apiVersion first (the models declare `kind` after `metadata`)."""
    body = resource.to_dict()
    ordered = {key: body.pop(key) for key in _ORDER if key in body}
    ordered.update(body)
    return ordered


def dump_yaml(resources: meta.Resource | Iterable[meta.Resource]) -> str:
    """One YAML document per resource, separated by `---`; parses back to equal resources."""
    items = [resources] if isinstance(resources, meta.Resource) else list(resources)
    return "---\n".join(
        yaml.safe_dump(to_manifest(r), sort_keys=False, allow_unicode=True,
                       default_flow_style=False)
        for r in items
    )


def dump_json(resources: meta.Resource | Iterable[meta.Resource]) -> str:
    """One resource as an object; several as a Kubernetes `kind: List`."""
    if isinstance(resources, meta.Resource):
        body: dict[str, Any] = to_manifest(resources)
    else:
        body = {"apiVersion": "v1", "kind": "List", "items": [to_manifest(r) for r in resources]}
    return json.dumps(body, indent=2, ensure_ascii=False) + "\n"
