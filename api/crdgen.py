"""Generate the Kubernetes CRDs of Network and Job: `python -m api.crdgen [--check]`.

The pydantic models in api/resources are the contract; the CRDs under
deploy/helm/dcnr/crds are derived from them and committed (helm installs a chart's crds/),
so that `kubectl apply -f examples/digits/network.yaml` is validated by the API server with
the same rules `dcnctl apply` uses. `--check` (and tests/api/test_crds.py) fails when the
committed files are not what the models produce now.

Pydantic writes JSON Schema (draft 2020-12); an apiextensions.k8s.io/v1 CRD needs a
*structural* OpenAPI v3.0 schema. `structural` converts, by fixed rules:

- `$ref`/`$defs` are inlined (a structural schema has no references);
- `X | None` (anyOf with null) becomes X with `nullable: true`;
- a quantity (anyOf string/number) becomes `x-kubernetes-int-or-string: true`: write
  fractional cpu as "500m" in a CR, as Kubernetes' own resource requests do;
- free-form JSON (a VNode's params) becomes `x-kubernetes-preserve-unknown-fields: true`;
- `const` becomes a one-value enum; a numeric `exclusiveMinimum: x` becomes OpenAPI 3.0's
  `minimum: x, exclusiveMinimum: true`;
- `title`, `additionalProperties: false` (structural pruning drops unknown fields) and
  null defaults are dropped.

Descriptions come from the models: a class docstring, or the `#:` comment above a field
(the same text a reader of api/resources sees), so `kubectl explain network.spec` has them.

Beyond the model's status, the CR status has the columns `dcnctl get` prints that are not
single fields (`ready` as "3/6", `steps` and `epochs` as "12/56"): the operator writes them,
so kubectl's printer columns match dcnctl's.
"""

from __future__ import annotations

import argparse
import inspect
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from api.resources import job, meta, network

REPO = Path(__file__).resolve().parent.parent
OUTPUT_DIR = REPO / "deploy" / "helm" / "dcnr" / "crds"

_NOTICE = "# Generated from api/resources by `python -m api.crdgen`: do not edit.\n"
_DOC_COMMENT = re.compile(r"^\s*#:\s?(.*)$")
_FIELD = re.compile(r"^\s*(\w+)\s*:")

Schema = dict[str, Any]

#: Printer columns as `dcnctl get` prints them (dcnctl.render.HEADERS).
COLUMNS: dict[str, list[Schema]] = {
    "Network": [
        {"name": "Ready", "type": "string", "jsonPath": ".status.ready"},
        {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
        {"name": "VNodes", "type": "integer", "jsonPath": ".status.vnodes", "priority": 1},
    ],
    "Job": [
        {"name": "Network", "type": "string", "jsonPath": ".spec.network"},
        {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
        {"name": "Step", "type": "string", "jsonPath": ".status.steps"},
        {"name": "Epoch", "type": "string", "jsonPath": ".status.epochs"},
        {"name": "Loss", "type": "number", "jsonPath": ".status.loss"},
        {"name": "Accuracy", "type": "number", "jsonPath": ".status.accuracy"},
        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    ],
}

#: Status fields only the CR has, written by dcnr-operator (dcnr_operator.status).
_MIRROR_FIELDS: dict[str, dict[str, Schema]] = {
    "Network": {
        "ready": {"type": "string", "description": "Ready slots of desired, as `dcnctl get`."},
        "vnodes": {"type": "integer", "description": "VNodes in the spec."},
        "message": {"type": "string", "description": "The last error applying the spec."},
        "orchestratorGeneration": {
            "type": "integer",
            "description": "The orchestrator's generation of the network last applied.",
        },
    },
    "Job": {
        "steps": {"type": "string", "description": "Step of total steps, as `dcnctl get`."},
        "epochs": {"type": "string", "description": "Epoch of epochs, as `dcnctl get`."},
        "jobName": {"type": "string", "description": "The orchestrator's name of the job."},
    },
}


def field_docs(model: type[BaseModel]) -> dict[str, str]:
    """Field name → its `#:` comment, from the class source (and its bases')."""
    docs: dict[str, str] = {}
    for cls in reversed(model.__mro__):
        if not (isinstance(cls, type) and issubclass(cls, BaseModel)) or cls is BaseModel:
            continue
        try:
            lines = inspect.getsource(cls).splitlines()
        except (OSError, TypeError):  # pragma: no cover - every model has a source file
            continue
        pending: list[str] = []
        for line in lines:
            comment = _DOC_COMMENT.match(line)
            if comment:
                pending.append(comment.group(1).strip())
                continue
            found = _FIELD.match(line)
            if found and pending:
                docs[found.group(1)] = " ".join(pending)
            pending = []
    return docs


def _describe(model: type[BaseModel], schema: Schema) -> None:
    """Descriptions of `model`'s fields into its (by-alias) JSON schema, in place."""
    docs = field_docs(model)
    props = schema.get("properties", {})
    for name, info in model.model_fields.items():
        key = info.alias or name
        if key in props and name in docs and "description" not in props[key]:
            props[key]["description"] = docs[name]


def _model_schema(model: type[BaseModel]) -> Schema:
    """The model's validation JSON schema, with field docs added to it and every nested
    model's definition."""
    schema = model.model_json_schema(by_alias=True, mode="validation")
    _describe(model, schema)
    defs = schema.get("$defs", {})
    for cls in _nested_models(model):
        if cls.__name__ in defs:
            _describe(cls, defs[cls.__name__])
    return schema


def _nested_models(model: type[BaseModel]) -> list[type[BaseModel]]:
    found: dict[str, type[BaseModel]] = {}

    def walk(cls: type[BaseModel]) -> None:
        for info in cls.model_fields.values():
            for arg in _types_in(info.annotation):
                if issubclass(arg, BaseModel) and arg.__name__ not in found:
                    found[arg.__name__] = arg
                    walk(arg)

    walk(model)
    return list(found.values())


def _types_in(annotation: Any) -> list[type]:
    if isinstance(annotation, type):
        return [annotation]
    out: list[type] = []
    for arg in getattr(annotation, "__args__", ()) or ():
        out += _types_in(arg)
    return out


def structural(node: Any, defs: dict[str, Schema]) -> Any:
    """A JSON schema node as a Kubernetes structural schema node (rules in the docstring)."""
    if not isinstance(node, dict):
        return node
    if node == {}:  # a free-form JSON value (JsonValue): anything goes
        return {"x-kubernetes-preserve-unknown-fields": True}
    if "$ref" in node:
        target = structural(defs[node["$ref"].rsplit("/", 1)[-1]], defs)
        extra = {k: v for k, v in node.items() if k != "$ref"}
        return {**target, **(structural(extra, defs) if extra else {})}
    node = dict(node)
    variants = node.pop("anyOf", None)
    if variants is not None:
        non_null = [v for v in variants if v.get("type") != "null"]
        nullable = len(non_null) < len(variants)
        types = {v.get("type") for v in non_null}
        rest = structural(node, defs) if node else {}
        if len(non_null) == 1:
            merged = {**structural(non_null[0], defs), **rest}
        elif types and types <= {"string", "number", "integer"}:
            # A quantity; its default is in the model's units (millicores, bytes), which
            # would read differently as a manifest value: the orchestrator applies it.
            rest.pop("default", None)
            merged = {"x-kubernetes-int-or-string": True, **rest}
        else:  # pragma: no cover - no such field in the models; add a rule when one appears
            raise ValueError(f"no structural form for anyOf {variants!r}")
        if nullable:
            merged["nullable"] = True
            if merged.get("default", 0) is None:
                del merged["default"]
        return merged
    out: Schema = {}
    for key, value in node.items():
        if key in ("title", "$defs"):
            continue
        if key == "additionalProperties":
            if value is False:
                continue
            if value == {} or value is True or _free_form(value, defs):
                out["x-kubernetes-preserve-unknown-fields"] = True
                continue
            out[key] = structural(value, defs)
        elif key == "properties":
            out[key] = {name: structural(sub, defs) for name, sub in value.items()}
        elif key == "items":
            out[key] = structural(value, defs)
        elif key == "const":
            out["enum"] = [value]
        elif key == "exclusiveMinimum" and not isinstance(value, bool):
            out["minimum"] = value
            out["exclusiveMinimum"] = True
        elif key == "exclusiveMaximum" and not isinstance(value, bool):
            out["maximum"] = value
            out["exclusiveMaximum"] = True
        elif key == "default" and value is None:
            continue
        else:
            out[key] = value
    if out.get("x-kubernetes-preserve-unknown-fields") and "type" not in out:
        out["type"] = "object"
    if "type" not in out and "enum" in out:
        out["type"] = "string"
    return out


def _free_form(value: Any, defs: dict[str, Schema]) -> bool:
    if isinstance(value, dict) and "$ref" in value:
        return defs.get(value["$ref"].rsplit("/", 1)[-1]) == {}
    return False


def openapi_schema(kind: str, model: type[meta.Resource]) -> Schema:
    fields = model.model_fields
    spec_model = _types_in(fields["spec"].annotation)[0]
    status_model = _types_in(fields["status"].annotation)[0]
    parts: dict[str, Schema] = {}
    for key, cls in (("spec", spec_model), ("status", status_model)):
        raw = _model_schema(cls)
        part = structural(raw, raw.get("$defs", {}))
        part.pop("required", None) if key == "status" else None
        parts[key] = part
    parts["status"] = _without_defaults(parts["status"])
    parts["status"]["properties"].update(_MIRROR_FIELDS[kind])
    module_doc = (inspect.getdoc(sys.modules[model.__module__]) or "").split("\n\n", 1)[0]
    return {
        "type": "object",
        "description": module_doc,
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": {"type": "object"},
            "spec": parts["spec"],
            "status": parts["status"],
        },
    }


def _without_defaults(node: Any) -> Any:
    """Status is written by the operator alone: defaults there would only be noise."""
    if isinstance(node, dict):
        return {k: _without_defaults(v) for k, v in node.items() if k != "default"}
    if isinstance(node, list):
        return [_without_defaults(v) for v in node]
    return node


def crd(model: type[meta.Resource]) -> Schema:
    kind, plural = model.KIND, model.PLURAL
    group, version = meta.API_VERSION.split("/")
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{plural}.{group}",
            "labels": {"app.kubernetes.io/part-of": "dcnr"},
        },
        "spec": {
            "group": group,
            "scope": "Namespaced",
            "names": {
                "kind": kind,
                "listKind": f"{kind}List",
                "plural": plural,
                "singular": kind.lower(),
                "categories": ["dcnr"],
            },
            "versions": [
                {
                    "name": version,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": COLUMNS[kind],
                    "schema": {"openAPIV3Schema": openapi_schema(kind, model)},
                }
            ],
        },
    }


MODELS: tuple[type[meta.Resource], ...] = (network.Network, job.Job)


def render() -> dict[str, str]:
    """File name → its text, for every CRD."""
    out = {}
    for model in MODELS:
        doc = crd(model)
        text = yaml.safe_dump(doc, sort_keys=False, width=100, allow_unicode=True)
        out[f"{doc['metadata']['name']}.yaml"] = _NOTICE + text
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m api.crdgen", description=__doc__)
    parser.add_argument("--check", action="store_true", help="fail if the files drifted")
    parser.add_argument("--output", type=Path, default=OUTPUT_DIR)
    args = parser.parse_args(argv)
    stale = []
    for name, text in render().items():
        path = args.output / name
        current = path.read_text() if path.exists() else None
        if current == text:
            continue
        if args.check:
            stale.append(str(path))
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            print(f"wrote {path}")
    if stale:
        print("CRDs drifted from api/resources; run `python -m api.crdgen`:", *stale, sep="\n  ")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
