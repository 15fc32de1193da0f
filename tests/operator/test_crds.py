"""The CRDs under deploy/helm/dcnr/crds are what api.crdgen makes of the models now, are
valid CustomResourceDefinitions for the oldest and newest Kubernetes we support, and accept
the example manifests while refusing what the models refuse."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from api import crdgen

REPO = Path(__file__).resolve().parents[2]


def _crd(name: str) -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((crdgen.OUTPUT_DIR / name).read_text())
    return doc


def test_committed_crds_are_what_the_models_generate() -> None:
    assert crdgen.main(["--check"]) == 0, "run `python -m api.crdgen` and commit the result"


def test_check_fails_on_a_drifted_file(tmp_path: Path) -> None:
    assert crdgen.main(["--output", str(tmp_path)]) == 0
    (tmp_path / "jobs.dcnr.io.yaml").write_text("drifted\n")
    assert crdgen.main(["--check", "--output", str(tmp_path)]) == 1


@pytest.mark.parametrize("version", ["1.25", "1.37"])
@pytest.mark.parametrize("name", ["networks.dcnr.io.yaml", "jobs.dcnr.io.yaml"])
def test_crds_are_valid_for_supported_kubernetes(name: str, version: str) -> None:
    kubernetes_validate.validate(_crd(name), desired_version=version, strict=True)


def _structural_problems(node: Any, path: str = "") -> list[str]:
    """What Kubernetes' structural-schema rules refuse: references, a missing type (unless
    int-or-string or preserve-unknown-fields), additionalProperties beside properties."""
    problems: list[str] = []
    if not isinstance(node, dict):
        return problems
    for bad in ("$ref", "$defs", "definitions", "anyOf", "const", "title"):
        if bad in node:
            problems.append(f"{path}: {bad}")
    if not ({"type", "x-kubernetes-int-or-string", "x-kubernetes-preserve-unknown-fields"}
            & node.keys()):  # fmt: skip
        problems.append(f"{path}: no type")
    if "properties" in node and "additionalProperties" in node:
        problems.append(f"{path}: properties and additionalProperties")
    for key, sub in node.get("properties", {}).items():
        problems += _structural_problems(sub, f"{path}.{key}")
    for key in ("items", "additionalProperties"):
        if isinstance(node.get(key), dict):
            problems += _structural_problems(node[key], f"{path}[{key}]")
    return problems


@pytest.mark.parametrize("name", ["networks.dcnr.io.yaml", "jobs.dcnr.io.yaml"])
def test_schemas_are_structural(name: str) -> None:
    schema = _crd(name)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    assert _structural_problems(schema) == []


def test_field_docs_become_descriptions() -> None:
    spec = _crd("networks.dcnr.io.yaml")["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    vnode = spec["properties"]["spec"]["properties"]["vnodes"]["items"]["properties"]
    assert vnode["inputs"]["description"].startswith("Names of the VNodes whose outputs")
    assert vnode["params"]["x-kubernetes-preserve-unknown-fields"] is True
    assert vnode["resources"]["properties"]["cpu"]["x-kubernetes-int-or-string"] is True


def test_printer_columns_match_dcnctl_get() -> None:
    from dcnctl import render  # the test may look at dcnctl; the generator may not

    for name, kind in (("networks.dcnr.io.yaml", "Network"), ("jobs.dcnr.io.yaml", "Job")):
        columns = _crd(name)["spec"]["versions"][0]["additionalPrinterColumns"]
        shown = ["NAME"] + [c["name"].upper() for c in columns if not c.get("priority")]
        assert shown == render.HEADERS[kind][0]


def _accepts(schema: dict[str, Any], value: Any) -> bool:
    import jsonschema

    # jsonschema knows neither nullable nor the x-kubernetes extensions: give it their meaning.
    def plain(node: Any) -> Any:
        if not isinstance(node, dict):
            return [plain(v) for v in node] if isinstance(node, list) else node
        out = {k: plain(v) for k, v in node.items() if not k.startswith("x-kubernetes")}
        if node.get("x-kubernetes-int-or-string"):
            out["type"] = ["integer", "string"]
        if node.get("x-kubernetes-preserve-unknown-fields"):
            out.pop("properties", None)
        if node.get("nullable") and "type" in out:
            out["type"] = [out["type"], "null"] if isinstance(out["type"], str) else out["type"]
        if out.get("exclusiveMinimum") is True:
            out["exclusiveMinimum"] = out.pop("minimum")
        if "properties" in out:
            out["additionalProperties"] = False  # what the API server prunes, made visible
        return out

    try:
        jsonschema.validate(value, plain(schema))
    except jsonschema.ValidationError:
        return False
    return True


def test_the_example_network_passes_and_a_bad_one_does_not() -> None:
    schema = _crd("networks.dcnr.io.yaml")["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    example = yaml.safe_load((REPO / "examples" / "digits" / "network.yaml").read_text())
    example.pop("metadata")
    assert _accepts(schema, example)
    bad = {**example, "spec": {**example["spec"], "validation": "sometimes"}}
    assert not _accepts(schema, bad)
    assert not _accepts(schema, {**example, "spec": {"vnodes": []}})
